"""The reward models an RL stage's sources need, trained first through the shared step.

  "sequence_rm": ``prefjax.rewards.model.RewardModel`` (kind "reward", Bradley-Terry on the
                 testbed's labelled pairs), unless a ``reward`` stage of the run trained one
                 (``ctx.reward``);
  "token_rm":    ``prefjax.rewards.token_model.TokenRewardModel`` (kind "token", ``token_bt``
                 on (flawed, minimally edited) pairs), with its precision / recall of flawed
                 tokens on held-out edits written to the summary.

Both start from the policy's backbone (the SFT model) and checkpoint as sub-stages
``<rl.name>_reward_model`` / ``<rl.name>_token_rm`` (a re-run restores them).
"""
from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefjax import distributed, sharding
from prefjax.data import pipeline
from prefjax.errors import ConfigError
from prefjax.rewards.model import RewardModel, reward_params_from_backbone
from prefjax.rewards.token_model import (TokenRewardModel, edit_pairs, encode_edit_pair,
                                         flaw_detection, token_reward_params_from_backbone)
from prefjax.rl import reward_sources as rw
from prefjax.train.checkpoint import save_params
from prefjax.train.finished_run import load_run
from prefjax.train.objective import make_objective
from prefjax.train.stages import train_stage



def _train_sub_stage(ctx, name, model, init_params, objective, examples, encode, scfg):
  """``train_stage`` on ``model`` (its own graphdef and shardings) from ``init_params``."""
  graphdef, _ = nnx.split(model)
  # a copy: the step donates its state, and the backbone leaves are the policy's own arrays
  params = train_stage(ctx, name, scfg, objective, params=jax.tree.map(jnp.copy, init_params),
                       examples=examples, encode=encode, graphdef=graphdef,
                       param_shardings=sharding.param_shardings(model, ctx.mesh))
  return graphdef, params


def _testbed_pairs(ctx, n, split="train"):
  if not getattr(ctx.data, "testbed", False):
    raise ConfigError("reward sources 'sequence_rm' / 'token_rm' train on the testbed's labelled "
                      "pairs; for a real model train one with a 'reward' stage and use "
                      "'rm:WORKDIR'")
  return ctx.data.examples("pairwise", split, n=n)


@rw.register_reward_source("sequence_rm")
def sequence_rm(env, arg=None):
  """A Bradley-Terry reward model: the one a ``reward`` stage of this run trained, else one
  trained now as the sub-stage ``<rl.name>_reward_model`` (config.rl.reward_model)."""
  ctx = env.ctx
  c, r = ctx.config, ctx.config.rl
  if getattr(ctx, "reward", None) is not None:
    graphdef, params = ctx.reward
  else:
    cfg = nnx.merge(ctx.graphdef, env.policy_params).cfg
    model = RewardModel(cfg, nnx.Rngs(c.seed))
    params = reward_params_from_backbone(nnx.to_pure_dict(nnx.state(model)), env.policy_params)
    graphdef, params = _train_sub_stage(
        ctx, f"{r.name}_reward_model", model, params, make_objective("bradley_terry"),
        _testbed_pairs(ctx, r.reward_model.n_pairs),
        pipeline.encode_pair(ctx.tokenizer, c.data.max_len, c.data.truncate), r.reward_model)
  env.critic_backbone = params["backbone"]
  return rw.sequence_rm_source(graphdef, params)


@rw.register_reward_source("token_rm", takes_arg="optional")
def token_rm(env, arg=None):
  """A token-level reward model. ``token_rm``: trained now on minimal edits (sub-stage
  ``<rl.name>_token_rm``, config.rl.token_rm; its flaw precision / recall go to the summary)
  and saved as ``workdir/params/token_rm``; ``token_rm:WORKDIR``: the one a finished run saved
  (it must read the policy's tokens: same tokenizer)."""
  ctx = env.ctx
  if arg is not None:
    loaded = load_run(arg, need=("token_reward",)).token_reward
    env.critic_backbone = env.critic_backbone or loaded.params["backbone"]
    return rw.token_rm_source(loaded.graphdef, loaded.params, f"token_rm:{arg}")
  c, r = ctx.config, ctx.config.rl
  t = r.token_rm
  cfg = nnx.merge(ctx.graphdef, env.policy_params).cfg
  model = TokenRewardModel(cfg, nnx.Rngs(c.seed))
  params = token_reward_params_from_backbone(nnx.to_pure_dict(nnx.state(model)),
                                             env.policy_params)
  encode = encode_edit_pair(ctx.tokenizer, c.data.max_len, c.data.truncate)
  graphdef, params = _train_sub_stage(
      ctx, f"{r.name}_token_rm", model, params,
      make_objective("token_bt", {"label_coef": t.label_coef}),
      edit_pairs(_testbed_pairs(ctx, t.n_pairs)), encode, t)
  env.summary.update(token_rm_flaw_metrics(ctx, graphdef, params, t, encode))
  save_token_rm(ctx, cfg, params)
  env.critic_backbone = env.critic_backbone or params["backbone"]
  return rw.token_rm_source(graphdef, params)


def save_token_rm(ctx, model_cfg, params) -> None:
  """``workdir/params/token_rm`` (pure params) and ``token_rm.json`` (its model config and
  tokenizer), which ``token_rm:WORKDIR`` and ``finished_run.load_run`` read."""
  if not distributed.is_main():
    return
  d = os.path.join(ctx.workdir, "params")
  os.makedirs(d, exist_ok=True)
  save_params(os.path.join(d, "token_rm"), params)
  with open(os.path.join(d, "token_rm.json"), "w") as f:
    json.dump({"kind": "token_reward_model", "tokenizer": type(ctx.tokenizer).__name__,
               "model": model_cfg.to_dict(), "model_source": ctx.config.model.init_from},
              f, indent=2)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_rewards(graphdef, params, batch):
  return nnx.merge(graphdef, params).token_rewards(batch, prefix="rejected_")


def token_rm_flaw_metrics(ctx, graphdef, params, t, encode) -> dict:
  """Precision / recall of flawed tokens (r_t < -threshold) on held-out edit pairs."""
  exs = edit_pairs(_testbed_pairs(ctx, t.n_eval_pairs, split="eval"))
  rs, fs, ms = [], [], []
  for b in pipeline.eval_batches(exs, encode, 64):
    rs.append(np.asarray(_token_rewards(graphdef, params, b)))
    fs.append(b["rejected_flaw_labels"])
    ms.append(b["rejected_loss_mask"] * b["example_mask"][:, None])
  out = flaw_detection(np.concatenate(rs), np.concatenate(fs), np.concatenate(ms),
                       threshold=t.flaw_threshold)
  out["token_rm/n_eval_edits"] = len(exs)
  return out
