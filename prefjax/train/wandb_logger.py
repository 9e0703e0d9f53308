"""Weights & Biases logging beside ``metrics.jsonl`` and TensorBoard (``config.wandb``).

    python scripts/train.py --config experiments/testbed/dpo.py --workdir runs/dpo \\
        --config.wandb.enabled=True --config.wandb.project=prefjax --config.wandb.mode=offline

Every scalar that ``MetricsWriter.write`` puts into ``metrics.jsonl`` goes to the run as
``<stage>/<name>`` against its stage's own x-axis ``<stage>/step`` (each stage counts its
steps from 1, as in TensorBoard); at the end the numbers of ``summary.json`` go to the run's
summary and the config to its config. Only process 0 logs. The run id is kept in
``workdir/wandb_run_id``, so re-running a workdir (resuming after a preemption) continues
the same run (steps after the last checkpoint are logged again, as ``metrics.jsonl``
rewrites them). The run is finished on every exit: 0 after a complete run, 75 (the CLI's
``EXIT_PREEMPTED``, with the run marked preempting) after SIGTERM / SIGINT, 1 after an error.

Fields: ``enabled``; ``project``; ``entity`` and ``group`` ("" = wandb's default); ``name``
("" = the workdir's name); ``dir`` (where wandb writes its ``wandb/`` folder, "" = the
workdir); ``mode`` ("" = wandb's default or ``$WANDB_MODE``, else ``online``, ``offline`` or
``disabled``); ``tags``. Needs the ``wandb`` extra (``pip install -e '.[wandb]'``).
"""
from __future__ import annotations

import json
import math
import os
import secrets

from prefjax.cli import EXIT_PREEMPTED
from prefjax.errors import ConfigError
from prefjax.extras import require
from prefjax.train.loop import Preempted

MODES = ("", "online", "offline", "disabled")
RUN_ID_FILE = "wandb_run_id"


def _wandb():
  return require("wandb", "wandb", "logging to Weights & Biases (config.wandb)")


def check(c) -> None:
  """Raises ``ConfigError`` for a bad ``config.wandb``, and ``MissingExtraError`` when it is
  enabled without the package, before a run writes anything."""
  wc = c.get("wandb")
  if wc is None or not wc.enabled:
    return
  if wc.mode not in MODES:
    raise ConfigError(f"config.wandb.mode: {wc.mode!r} is not one of "
                      f"{', '.join(repr(m) for m in MODES)}")
  _wandb()


def _run_id(workdir: str) -> str:
  """The workdir's run id (made on the first run: 12 hex digits)."""
  path = os.path.join(workdir, RUN_ID_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return f.read().strip()
  run_id = secrets.token_hex(6)
  with open(path, "w") as f:
    f.write(run_id + "\n")
  return run_id


class WandbLogger:
  """One wandb run of a prefjax run: ``log`` per logged step, ``finish`` once."""

  def __init__(self, run):
    self.run = run
    self._stages: set[str] = set()

  @classmethod
  def start(cls, c, workdir: str) -> WandbLogger | None:
    """The run of ``config.wandb`` (None when it is not enabled)."""
    wc = c.get("wandb")
    if wc is None or not wc.enabled:
      return None
    check(c)
    wandb = _wandb()
    for d in {workdir, wc.dir or workdir}:
      os.makedirs(d, exist_ok=True)
    run = wandb.init(
        project=wc.project or None, entity=wc.entity or None, group=wc.group or None,
        name=wc.name or os.path.basename(os.path.abspath(workdir)), dir=wc.dir or workdir,
        mode=wc.mode or None, tags=list(wc.tags) or None,
        config=json.loads(c.to_json_best_effort()), id=_run_id(workdir),
        resume="allow")
    return cls(run)

  def log(self, stage: str, step: int, values: dict) -> None:
    if stage not in self._stages:              # each stage's metrics on its own x-axis
      self.run.define_metric(f"{stage}/step")
      self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
      self._stages.add(stage)
    self.run.log({**{f"{stage}/{k}": float(v) for k, v in values.items()},
                  f"{stage}/step": int(step)})

  def summary(self, values: dict) -> None:
    """The finite numbers of ``values`` (a run's summary) as the run's summary."""
    self.run.summary.update({
        k: v for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})

  def finish(self, error: BaseException | None = None) -> None:
    if isinstance(error, Preempted):
      self.run.mark_preempting()
      self.run.finish(exit_code=EXIT_PREEMPTED)
    else:
      self.run.finish(exit_code=0 if error is None else 1)
