"""Writes measurements to ``metrics.jsonl`` (one line per logged step), TensorBoard and,
when given one, a Weights & Biases run (``prefjax.train.wandb_logger``).

    with MetricsWriter(workdir, tensorboard=True, wandb=WandbLogger.start(c, workdir)) as w:
      w.write("dpo", step, {"loss": 0.69})
    # closed on any exit; the wandb run finishes with the exit's code (preempted: 75)
"""
from __future__ import annotations

import json
import math
import os


class MetricsWriter:

  def __init__(self, workdir: str, tensorboard: bool = True, wandb=None):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._wandb = wandb
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate(self, stage: str, after_step: int) -> None:
    """Drops lines of ``stage`` past ``after_step`` (a resumed run rewrites them)."""
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    keep = []
    for line in lines:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:   # a line cut by kill -9
        continue
      if rec.get("stage") == stage and rec.get("step", 0) > after_step:
        continue
      keep.append(line if line.endswith("\n") else line + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, stage: str, step: int, values: dict) -> None:
    clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()}
    rec = {"stage": stage, "step": int(step), **clean}
    with open(self.path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    if self._tb is not None:
      for k, v in values.items():
        if math.isfinite(float(v)):
          self._tb.add_scalar(f"{stage}/{k}", float(v), int(step))
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log(stage, step, values)

  def summary(self, values: dict) -> None:
    """A finished run's summary (``summary.json``) to the sinks that keep one (wandb)."""
    if self._wandb is not None:
      self._wandb.summary(values)

  def close(self, error: BaseException | None = None):
    """Closes the sinks; ``error`` is what ended the run (None: it completed)."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish(error)
      self._wandb = None

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    self.close(exc)
    return False
