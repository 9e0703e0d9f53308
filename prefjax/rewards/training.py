"""Reward-model stages: ``reward`` (Bradley-Terry through the shared step) and
``eval_reward`` (held-out accuracy, against the oracle where there is one).

The model trained is a ``RewardModel``: the run's language-model backbone (the model source,
or the SFT stage's output when one ran before) plus a scalar head, with the run's tokenizer.
Configured by ``config.reward``:

  data        "world" (testbed pairs), "length_bias" (the length-biased labeller,
              ``prefjax.testbed.length_bias``), "" (= ``config.data.train``) or any data
              spec (hh:PATH, llmbar:PATH, jsonl:PATH, ...; ``prefjax.data.file_sources``)
  n_pairs, n_eval_pairs, loss, loss_kwargs, steps, batch_size, lr, ...  (as other stages)
  max_len     (0: ``config.data.max_len``)
  length_bias {pad_rate, max_pad, bias}

Writes ``workdir/params/reward`` (the final pure params) and ``workdir/params/reward.json``
(model config and tokenizer source; ``prefjax.train.finished_run.load_run`` reads both).
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from prefjax import sharding
from prefjax.rewards.calibration import spearman
from prefjax.rewards.saved_scorers import load_scorer
from prefjax.rewards.model import build_reward_model, reward_params_from_backbone
from prefjax.rewards.scorer import RewardScorer
from prefjax.train.checkpoint import save_params
from prefjax.train.data_source import TESTBED_REWARD_DATA, testbed_reward_pairs
from prefjax.train.sections import train_section
from prefjax.train.objective import make_objective
from prefjax.train.stages import accum, copy_params, train_stage


def reward_config() -> ml_collections.ConfigDict:
  """Defaults of the ``reward`` section (see the module docstring); max_len 0 = the run's
  ``config.data.max_len``, n_pairs 0 = every pair."""
  r = train_section(steps=300, batch_size=32, lr=1e-3, warmup=20)
  r.loss = "bradley_terry"
  r.loss_kwargs = ml_collections.ConfigDict(dict(margin=0.0, center_coef=0.0))
  r.data = ""
  r.n_pairs, r.n_eval_pairs, r.max_len = 0, 256, 0
  r.length_bias = ml_collections.ConfigDict(dict(pad_rate=0.5, max_pad=8, bias=0.05))
  return r


def reward_pairs(c, split: str, n: int, data=None):
  """Preference pairs {prompt, chosen, rejected[, alpha, reward_chosen, reward_rejected]}."""
  r = c.reward
  if r.data in TESTBED_REWARD_DATA:
    return testbed_reward_pairs(c, r.data, split, n)
  pairs = data.examples("pairwise", "train" if split == "train" else "eval",
                        spec=r.data or None)
  return pairs[:n] if n else pairs


def _max_len(c):
  return c.reward.get("max_len", 0) or c.data.max_len


def train_reward_model(ctx, backbone_params) -> dict:
  """Trains ``RewardModel(backbone = backbone_params)``; returns summary entries."""
  c = ctx.config
  model, graphdef, params = build_reward_model(c, ctx.tokenizer, ctx.model_cfg)
  params = reward_params_from_backbone(params, copy_params(backbone_params))
  param_sh = sharding.param_shardings(model, ctx.mesh)
  params = jax.device_put(params, param_sh)
  pairs = reward_pairs(c, "train", c.reward.n_pairs, ctx.data)
  objective = make_objective(c.reward.loss, c.reward.loss_kwargs.to_dict())
  params = train_stage(ctx, "reward", c.reward, objective, params=params, examples=pairs,
                       encode=ctx.data.encoder("reward", max_len=_max_len(c),
                                               batch_size=c.reward.batch_size * accum(c.reward)),
                       graphdef=graphdef, param_shardings=param_sh)
  d = os.path.join(ctx.workdir, "params")
  save_params(os.path.join(d, "reward"), params)
  with open(os.path.join(d, "reward.json"), "w") as f:
    json.dump({"kind": "reward_model", "tokenizer": type(ctx.tokenizer).__name__,
               "max_len": _max_len(c), "model": ctx.model_cfg.to_dict(),
               "model_source": c.model.init_from}, f, indent=2)
  ctx.reward = (graphdef, params)
  return {"reward/num_params": int(sum(x.size for x in jax.tree.leaves(params)))}


def evaluate_reward_model(ctx) -> dict:
  """Held-out accuracy of the reward model trained in this run (or restored from it)."""
  c = ctx.config
  graphdef, params = ctx.reward or (None, None)
  if params is None:
    scorer, _ = load_scorer(ctx.workdir, kind="reward")
  else:
    scorer = RewardScorer(graphdef, params, ctx.tokenizer, max_len=_max_len(c))
  if not c.progress:
    scorer.progress = False                 # --config.progress=False: no scoring bar either
  heldout = reward_pairs(c, "eval", c.reward.n_eval_pairs, ctx.data)
  return evaluate_pairs(scorer, heldout)


def evaluate_pairs(scorer, pairs, prefix: str = "reward_eval/") -> dict:
  """Held-out accuracy (tie = wrong), oracle accuracy where pairs carry r*, Spearman(r, len)."""
  prompts = [p.get("chat") or p["prompt"] for p in pairs]
  n = len(pairs)   # one call: each pair's two responses share their prompt's unit
  r = scorer.score(prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
  rc, rr = r[:n], r[n:]
  out = {prefix + "accuracy": float(np.mean(rc > rr)), prefix + "n_pairs": len(pairs),
         prefix + "margin": float(np.mean(rc - rr))}
  if "reward_chosen" in pairs[0]:
    ow = np.array([p["reward_chosen"] for p in pairs])
    ol = np.array([p["reward_rejected"] for p in pairs])
    strict = ow != ol
    if strict.any():
      better_first = np.where(ow > ol, rc > rr, rr > rc)
      out[prefix + "oracle_accuracy"] = float(np.mean(better_first[strict]))
  lengths = np.array([len(p[s]) for p in pairs for s in ("chosen", "rejected")], np.float64)
  rewards = np.stack([rc, rr], 1).reshape(-1).astype(np.float64)
  out[prefix + "spearman_reward_chars"] = float(spearman(rewards, lengths))
  return out
