"""Scorers from saved runs: a reward-model workdir, or the implicit reward of a DPO workdir.

  scorer, info = load_scorer("runs/rm")        # workdir/params/reward (the reward stage)
  scorer, info = load_scorer("runs/dpo")       # beta * log pi/pi_ref: the run's policy + reference
  scorer, info = load_scorer("loglik:runs/dpo")   # beta * log pi (no reference)

The run is read by ``prefjax.train.finished_run.load_run``; every failure is a
``PrefjaxError`` with a one-line message naming the path.
"""
from __future__ import annotations

import os

from prefjax.errors import ConfigError
from prefjax.rewards.implicit import ImplicitRewardScorer
from prefjax.rewards.scorer import RewardScorer
from prefjax.train.finished_run import last_step_dir, load_run, run_config

KINDS = ("auto", "reward", "implicit", "loglik")


def load_scorer(path: str, *, kind: str = "auto", beta: float | None = None,
                max_len: int | None = None, batch_size: int = 32):
  """(scorer with ``score(prompts, responses) -> [N]``, info dict) for a saved run."""
  if ":" in path and path.split(":", 1)[0] in KINDS:
    kind, path = path.split(":", 1)
  if kind not in KINDS:
    raise ConfigError(f"unknown model kind {kind!r}; expected one of {KINDS}")
  if not os.path.isdir(path):
    raise ConfigError(f"{path}: no such directory")
  c = run_config(path)
  if kind == "auto":
    kind = "reward" if os.path.isdir(os.path.join(path, "params", "reward")) else "implicit"
  if kind == "reward":
    rm = load_run(path, need=("reward",)).reward
    ml = max_len or c.reward.get("max_len", 0) or c.data.max_len
    return (RewardScorer(rm.graphdef, rm.params, rm.tokenizer, max_len=ml,
                         batch_size=batch_size),
            {"kind": "reward_model", "path": path, "max_len": ml})
  if last_step_dir(os.path.join(path, "checkpoints", "dpo")) is None:
    raise ConfigError(f"{path}: no checkpoints/dpo (an implicit reward needs a DPO run)")
  run = load_run(path, need=("policy",) if kind == "loglik" else ("policy", "reference"))
  b = beta if beta is not None else float(dict(c.dpo.loss_kwargs).get("beta", 1.0))
  ml = max_len or c.data.max_len
  scorer = ImplicitRewardScorer(run.graphdef, run.policy, run.reference, run.tokenizer,
                                beta=b, max_len=ml, batch_size=batch_size)
  return scorer, {"kind": kind, "path": path, "beta": b, "max_len": ml}
