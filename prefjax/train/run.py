"""A run = a model source + a data source + stages, through the one shared step.

``run(config, workdir)`` is what ``scripts/train.py`` calls; it reads top to bottom:

  1. validate the config and every stage's loss (a bad run writes nothing)
  2. the model source (``config.model.init_from``: preset | HF dir | GGUF | checkpoint)
  3. the data source (``config.data.train``: testbed | a preference / SFT / group file)
  4. the stages of ``config.stages`` in order (``prefjax.train.stages``; each checkpoints
     under ``workdir/checkpoints/<stage>/`` and resumes from there when re-run)
  5. the outputs: ``workdir/model/`` (prefjax checkpoint), ``workdir/export/hf/`` (a
     transformers directory), ``workdir/summary.json``; measurements go to
     ``workdir/metrics.jsonl``, TensorBoard and, with ``config.wandb``, Weights & Biases

Re-running on the same workdir resumes every stage from its last checkpoint (a finished
stage is restored, not retrained) and ends with the same summary.
"""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections

from prefjax import distributed, sharding, xla_cpu
from prefjax.train import config as config_lib
from prefjax.train import model_source, wandb_logger
from prefjax.train import builtin_stages   # noqa: F401  (registers the built-in stages)
from prefjax.train.data_source import DataSource
from prefjax.train.metrics_writer import MetricsWriter
from prefjax.train.stages import STAGES, RunContext


class Clock:
  """Wall seconds per stage, written as ``seconds/<name>`` into the summary."""

  def __init__(self, summary):
    self.summary, self.lap = summary, time.perf_counter()

  def __call__(self, name):
    now = time.perf_counter()
    self.summary[f"seconds/{name}"] = self.summary.get(f"seconds/{name}", 0.0) + now - self.lap
    self.lap = now


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured stages and writes ``workdir/summary.json``; returns the summary."""
  t0 = time.perf_counter()
  dc = c.get("distributed")                    # multi-host: before any other JAX call
  if dc is not None and (dc.enabled or os.environ.get(distributed.ENV_COORDINATOR)):
    distributed.initialize(dc.coordinator_address or None, dc.num_processes or None,
                           None if dc.process_id < 0 else dc.process_id)
  config_lib.validate(c)
  wandb_logger.check(c)
  scheduler = None
  if (c.model.get("overrides") or {}).get("remat", "none") != "none":
    scheduler = xla_cpu.prefer_memory_scheduler()   # before the first JAX computation
  for name in c.stages:                        # fail fast: bad loss names / hyper-parameters
    STAGES[name].check(c)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  model = model_source.load(c, mesh)                # a bad model source stops before any output
  os.makedirs(workdir, exist_ok=True)
  if distributed.is_main():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(c.to_json_best_effort(indent=2))
  data = DataSource(c, model.tokenizer)
  main = distributed.is_main()                 # only process 0 writes logs and summaries
  writer = MetricsWriter(workdir, tensorboard=c.tensorboard and main,
                         wandb=wandb_logger.WandbLogger.start(c, workdir) if main else None)
  with writer:                                 # closed on every exit, preemption included
    summary = {"num_params": model.num_params, "devices": len(jax.devices()),
               "mesh": dict(mesh.shape), "model/source": model.source}
    ctx = RunContext(config=c, graphdef=model.graphdef, model_cfg=model.cfg,
                     tokenizer=model.tokenizer, mesh=mesh,
                     param_shardings=model.param_shardings, workdir=workdir, writer=writer,
                     data=data, summary=summary)
    if scheduler is not None and jax.default_backend() == "cpu":
      summary["xla_cpu_scheduler"] = scheduler
    clock = Clock(summary)
    clock("setup")

    models = builtin_stages.Models(policy=model.params)
    model.params = None      # the stages own the weights now (a LoRA stage may quantize them)
    for name in c.stages:
      STAGES[name](ctx, models)
      clock(name)

    if c.get("export") is None or c.export.enabled:
      builtin_stages.write_outputs(ctx, models)
      clock("export")
    if data.reports:
      summary["data/reports"] = data.reports
    summary["wall_seconds"] = time.perf_counter() - t0
    writer.summary(summary)
  if main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  return summary
