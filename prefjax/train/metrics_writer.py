"""Writes measurements to ``metrics.jsonl`` (one line per logged step) and TensorBoard."""
from __future__ import annotations

import json
import math
import os


class MetricsWriter:

  def __init__(self, workdir: str, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
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

  def close(self):
    if self._tb is not None:
      self._tb.close()
