"""Reward-model stages for the runner: ``reward`` (Bradley-Terry through the shared step)
and ``eval_reward`` (held-out accuracy, against the oracle where there is one).

The graphdef trained is a ``RewardModel``'s (backbone + scalar head); with an ``sft`` stage
before it the backbone starts from the SFT parameters. Configured by ``config.reward``:

  data        "world" (testbed pairs), "length_bias" (the length-biased labeller,
              ``prefjax.testbed.length_bias``) or a preference file spec
              (``read_preferences``: hh:PATH, llmbar:PATH, ...; byte-level tokenizer)
  n_pairs, n_eval_pairs, loss, loss_kwargs, steps, batch_size, lr, ...  (as other stages)
  length_bias {pad_rate, max_pad, bias}

Writes ``workdir/params/reward`` (the final pure params; ``load_reward_scorer`` reads it).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from flax import nnx

from prefjax import sharding
from prefjax.data import pipeline, read_preferences
from prefjax.data.byte_tokenizer import ByteTokenizer
from prefjax.errors import ConfigError
from prefjax.models import make_config
from prefjax.rewards.calibration import spearman
from prefjax.rewards.model import RewardModel, reward_params_from_backbone
from prefjax.rewards.scoring import RewardScorer
from prefjax.testbed import length_bias, world
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train.checkpoint import save_params
from prefjax.train.objective import make_objective

TESTBED_DATA = ("world", "length_bias")


def reward_tokenizer(c):
  """The testbed tokenizer for testbed data, else the byte-level tokenizer."""
  return TestbedTokenizer() if c.reward.data in TESTBED_DATA else ByteTokenizer()


def reward_pairs(c, split: str, n: int):
  """Preference pairs {prompt, chosen, rejected[, alpha, reward_chosen, reward_rejected]}."""
  r = c.reward
  wcfg = world.WorldConfig(tasks=tuple(c.testbed.tasks), seed=c.testbed.seed,
                           sft_error_rate=c.testbed.sft_error_rate,
                           proposal_correct_rate=c.testbed.proposal_correct_rate,
                           bt_temperature=c.testbed.bt_temperature,
                           label_noise=c.testbed.label_noise)
  if r.data == "world":
    return world.preference_pairs(wcfg, n, split="train" if split == "train" else "eval")
  if r.data == "length_bias":
    lb = length_bias.LengthBias(**r.length_bias.to_dict())
    return length_bias.length_bias_pairs(wcfg, lb, n, split=split)
  # A file: the first n_eval_pairs (in a seeded shuffle) are held out.
  res = read_preferences(r.data)
  rows = [{"id": e.id, "prompt": e.prompt, "chosen": e.responses[0],
           "rejected": e.responses[1], "alpha": 1.0 if e.alpha is None else e.alpha}
          for e in res.examples if len(e.responses) == 2 and e.responses[0] and e.responses[1]]
  order = np.random.default_rng(c.seed).permutation(len(rows))
  n_eval = min(r.n_eval_pairs, len(rows) // 5)
  idx = order[:n_eval] if split != "train" else order[n_eval:]
  return [rows[i] for i in idx[:n]]


def _clip_pairs(pairs, tok, max_len):
  """Cuts responses (keeping their start) so both sides fit max_len with some prompt."""
  keep = max_len - max(1, max_len // 4)
  out = []
  for p in pairs:
    q = dict(p)
    for side in ("chosen", "rejected"):
      ids = tok.encode(q[side])
      if len(ids) + 1 > keep:   # 4 spare tokens: a cut UTF-8 character decodes to 3 bytes
        q[side] = tok.decode(ids[:keep - 4])
    out.append(q)
  return out


def build_reward_model(c, tokenizer):
  """(model, graphdef, pure params) of a fresh ``RewardModel`` from ``config.model``."""
  mcfg = make_config(c.model.preset, vocab_size=tokenizer.vocab_size,
                     overrides=c.model.overrides.to_dict())
  model = RewardModel(mcfg, nnx.Rngs(c.seed))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)


def run_reward_stages(c, workdir, *, mesh, writer, sft_params, train_stage) -> dict:
  """Trains (``reward`` in stages) and evaluates (``eval_reward``) a reward model."""
  if "sft" in c.stages and c.reward.data not in TESTBED_DATA:
    raise ConfigError("config.stages: an sft stage before a reward model is only supported "
                      f"on testbed data (config.reward.data={c.reward.data!r})")
  tok = reward_tokenizer(c)
  max_len = c.reward.get("max_len", c.data.max_len)
  model, graphdef, params = build_reward_model(c, tok)
  if sft_params is not None and "sft" in c.stages:
    params = reward_params_from_backbone(params, sft_params)
  param_sh = sharding.param_shardings(model, mesh)
  params = jax.device_put(params, param_sh)
  out = {"reward/num_params": int(sum(x.size for x in jax.tree.leaves(params)))}
  if "reward" in c.stages:
    pairs = _clip_pairs(reward_pairs(c, "train", c.reward.n_pairs), tok, max_len)
    objective = make_objective(c.reward.loss, c.reward.loss_kwargs.to_dict())
    params = train_stage(
        "reward", c.reward, objective, graphdef=graphdef, params=params, param_sh=param_sh,
        ref_params=None, examples=pairs,
        encode=pipeline.encode_pair(tok, max_len, c.data.truncate), mesh=mesh,
        workdir=workdir, c=c, writer=writer)
    save_params(os.path.join(workdir, "params", "reward"), params)
    with open(os.path.join(workdir, "params", "reward.json"), "w") as f:
      json.dump({"kind": "reward_model", "tokenizer": type(tok).__name__, "max_len": max_len},
                f)
  if "eval_reward" in c.stages:
    heldout = reward_pairs(c, "eval", c.reward.n_eval_pairs)
    out.update(evaluate_pairs(RewardScorer(graphdef, params, tok, max_len=max_len), heldout))
  return out


def evaluate_pairs(scorer, pairs, prefix: str = "reward_eval/") -> dict:
  """Held-out accuracy (tie = wrong), oracle accuracy where pairs carry r*, Spearman(r, len)."""
  prompts = [p["prompt"] for p in pairs]
  rc = scorer.score(prompts, [p["chosen"] for p in pairs])
  rr = scorer.score(prompts, [p["rejected"] for p in pairs])
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
