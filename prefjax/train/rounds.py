"""Batches made from the policy itself, round by round: RL rollouts and online preference pairs.

    src = RoundBatches(build, steps_per_round=U, directory=workdir/rounds/<stage>)
    state = run_stage(..., batches=src, num_steps=rounds * U, on_log=src.on_log)

Round r covers steps ``[r * U, (r + 1) * U)``. At its first step the training loop asks
``src.batch_from_state(step, state)``; the source calls ``build(r, state) -> (batches,
metrics)`` with the state the round starts from (a rollout of the current policy, pairs
scored by a reward source, ...), keeps its ``U`` batches (numpy dicts) and serves them one
per step.

The round is written to ``directory/round.npz`` (the latest one only) before its first step
runs, so a run stopped in the middle of a round (SIGTERM: the loop checkpoints that step)
resumes with the very batches it was training on and ends identically; a run resumed at a
round boundary builds the round again from the restored state, which gives the same batches.
Only process 0 writes.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from prefjax import distributed


class RoundBatches:
  """``batch_from_state(step, state)`` for ``prefjax.train.loop.run_stage``; the round's
  ``metrics``."""

  def __init__(self, build: Callable, steps_per_round: int, directory: str):
    if steps_per_round < 1:
      raise ValueError(f"steps_per_round must be >= 1, got {steps_per_round}")
    self.build, self.steps_per_round, self.directory = build, steps_per_round, directory
    self.round: int | None = None
    self.batches: list[dict] = []
    self.metrics: dict = {}

  @property
  def _path(self) -> str:
    return os.path.join(self.directory, "round.npz")

  def batch_from_state(self, step: int, state) -> dict:
    r, j = divmod(step, self.steps_per_round)
    if r != self.round:
      if not self._load(r, resumed_inside=j > 0):
        batches, metrics = self.build(r, state)
        if len(batches) != self.steps_per_round:
          raise ValueError(f"round {r}: build made {len(batches)} batches, expected "
                           f"{self.steps_per_round}")
        self.batches = [{k: np.asarray(v) for k, v in b.items()} for b in batches]
        self.metrics = {k: float(v) for k, v in metrics.items()}
        self._save(r)
      self.round = r
    return self.batches[j]

  def on_log(self, state, step) -> dict:
    """The current round's metrics, for the loop's metrics line (``on_log`` hook)."""
    del state, step
    return dict(self.metrics)

  # --------------------------------------------------------------------------- persistence
  def _save(self, r: int) -> None:
    if not distributed.is_main():
      return
    os.makedirs(self.directory, exist_ok=True)
    arrays = {f"{i}/{k}": v for i, b in enumerate(self.batches) for k, v in b.items()}
    tmp = self._path + ".tmp.npz"
    np.savez(tmp, **arrays, __meta__=np.frombuffer(json.dumps(
        {"round": r, "metrics": self.metrics}).encode(), np.uint8))
    os.replace(tmp, self._path)

  def _load(self, r: int, resumed_inside: bool) -> bool:
    """Restores round ``r`` from disk when the loop resumes inside it."""
    if not resumed_inside or not os.path.exists(self._path):
      return False
    with np.load(self._path) as z:
      meta = json.loads(bytes(z["__meta__"]).decode())
      if meta["round"] != r:
        return False
      batches: list[dict] = [{} for _ in range(self.steps_per_round)]
      for key in z.files:
        if key == "__meta__":
          continue
        i, name = key.split("/", 1)
        batches[int(i)][name] = z[key]
    self.batches, self.metrics = batches, meta["metrics"]
    print(f"[rounds] resuming inside round {r} from {self._path}", flush=True)
    return True
