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
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefjax import sharding
from prefjax.data import pipeline
from prefjax.rewards.model import RewardModel, reward_params_from_backbone
from prefjax.rewards.token_model import (TokenRewardModel, edit_pairs, encode_edit_pair,
                                         flaw_detection, token_reward_params_from_backbone)
from prefjax.rl import rewards as rw
from prefjax.train.checkpoint import Checkpointer
from prefjax.train.loop import run_stage
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state, make_train_step



def _train_sub_stage(ctx, name, model, init_params, objective, examples, encode, scfg):
  graphdef, _ = nnx.split(model)
  param_sh = sharding.param_shardings(model, ctx.mesh)
  c = ctx.config
  tx, schedule = make_optimizer(scfg.lr, scfg.steps, warmup_steps=scfg.warmup_steps,
                                weight_decay=scfg.weight_decay, b1=scfg.b1, b2=scfg.b2,
                                clip_norm=scfg.clip_norm,
                                final_lr_fraction=scfg.final_lr_fraction,
                                lr_multipliers=dict(scfg.get("lr_multipliers", None) or {}))
  pipeline.check_examples(examples, encode)
  batches = pipeline.batched(examples, encode, scfg.batch_size, seed=c.seed,
                             num_steps=scfg.steps)
  state, state_sh = init_state(jax.tree.map(jnp.copy, init_params), tx, param_sh)
  batch_sh = sharding.batch_sharding(ctx.mesh)
  step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                         batch_sharding=batch_sh, ref_shardings=param_sh)
  ckpt = Checkpointer(os.path.join(ctx.workdir, "checkpoints", name),
                      every=c.checkpoint.every, keep=c.checkpoint.keep)
  state = run_stage(name, train_step=step, state=state, state_shardings=state_sh,
                    ref_params=None, batches=batches, batch_sharding=batch_sh,
                    num_steps=scfg.steps, checkpointer=ckpt, writer=ctx.writer,
                    log_every=c.log_every, progress=c.get("progress", False))
  ckpt.close()
  return graphdef, state["params"]


def reward_sources(ctx, r, policy_params, summary):
  """[(RewardSource, weight)] and the backbone a separate critic starts from."""
  cfg = nnx.merge(ctx.graphdef, policy_params).cfg
  tok, c = ctx.tokenizer, ctx.config
  sources, critic_backbone = [], None
  for name, weight in dict(r.rewards).items():
    if name == "oracle":
      sources.append((rw.make_source("oracle"), weight))
      continue
    if name == "sequence_rm" and getattr(ctx, "reward", None) is not None:
      graphdef, params = ctx.reward            # a reward stage of this run trained one
      sources.append((rw.make_source("sequence_rm", graphdef=graphdef, params=params), weight))
      critic_backbone = params["backbone"]
    elif name == "sequence_rm":
      model = RewardModel(cfg, nnx.Rngs(c.seed))
      params = reward_params_from_backbone(nnx.to_pure_dict(nnx.state(model)), policy_params)
      pairs = rw.testbed_pairs(c, r.reward_model.n_pairs)
      graphdef, params = _train_sub_stage(
          ctx, f"{r.name}_reward_model", model, params,
          make_objective("bradley_terry"), pairs,
          pipeline.encode_pair(tok, c.data.max_len, c.data.truncate), r.reward_model)
      sources.append((rw.make_source("sequence_rm", graphdef=graphdef, params=params), weight))
      critic_backbone = params["backbone"]
    else:                                                       # token_rm
      t = r.token_rm
      model = TokenRewardModel(cfg, nnx.Rngs(c.seed))
      params = token_reward_params_from_backbone(nnx.to_pure_dict(nnx.state(model)),
                                                 policy_params)
      exs = edit_pairs(rw.testbed_pairs(c, t.n_pairs))
      encode = encode_edit_pair(tok, c.data.max_len, c.data.truncate)
      graphdef, params = _train_sub_stage(
          ctx, f"{r.name}_token_rm", model, params,
          make_objective("token_bt", {"label_coef": t.label_coef}), exs, encode, t)
      summary.update(token_rm_flaw_metrics(graphdef, params, c, t, encode))
      sources.append((rw.make_source("token_rm", graphdef=graphdef, params=params), weight))
      critic_backbone = critic_backbone or params["backbone"]
  return sources, critic_backbone


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_rewards(graphdef, params, batch):
  return nnx.merge(graphdef, params).token_rewards(batch, prefix="rejected_")


def token_rm_flaw_metrics(graphdef, params, c, t, encode) -> dict:
  """Precision / recall of flawed tokens (r_t < -threshold) on held-out edit pairs."""
  exs = edit_pairs(rw.testbed_pairs(c, t.n_eval_pairs, split="eval"))
  rs, fs, ms = [], [], []
  for b in pipeline.eval_batches(exs, encode, 64):
    rs.append(np.asarray(_token_rewards(graphdef, params, b)))
    fs.append(b["rejected_flaw_labels"])
    ms.append(b["rejected_loss_mask"] * b["example_mask"][:, None])
  out = flaw_detection(np.concatenate(rs), np.concatenate(fs), np.concatenate(ms),
                       threshold=t.flaw_threshold)
  out["token_rm/n_eval_edits"] = len(exs)
  return out
