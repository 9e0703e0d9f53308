"""The training loop for one stage: resume, step, log, checkpoint. Reads top to bottom."""
from __future__ import annotations

import math
import time
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from prefjax.errors import PrefjaxError
from prefjax.train.checkpoint import Checkpointer
from prefjax.train.metrics_writer import MetricsWriter


class NonFiniteLossError(PrefjaxError, RuntimeError):
  """Training stopped because the loss became NaN or infinite."""


def run_stage(stage: str, *, train_step: Callable, state, state_shardings, ref_params,
              batches, batch_sharding, num_steps: int, checkpointer: Checkpointer,
              writer: MetricsWriter, log_every: int = 10, on_log: Callable | None = None,
              progress: bool = True):
  """Runs ``train_step`` from the last checkpoint (if any) to ``num_steps``.

  ``batches[i]`` is the batch of step i (a random-access dataset), so resuming needs only
  the train state. Returns the final state.
  """
  start = checkpointer.latest_step()
  if start is not None:
    state = checkpointer.restore(start, state, state_shardings)
    print(f"[{stage}] resuming from checkpoint at step {start} "
          f"({checkpointer.directory})", flush=True)
  start = start or 0
  writer.truncate(stage, start)
  if start >= num_steps:
    return state

  bar = tqdm(range(start, num_steps), desc=stage, disable=not progress, dynamic_ncols=True)
  last_log, t0 = start, time.perf_counter()
  for step in bar:
    batch = jax.device_put(batches[step], batch_sharding)
    state, m = train_step(state, batch, ref_params)
    done = step + 1
    last = done == num_steps
    if done % log_every == 0 or last or checkpointer.should_save(done, last):
      m = jax.device_get(m)
      tokens = float(m.pop("data/tokens")) * (done - last_log)  # batches are equal-shaped
      if not math.isfinite(float(m["loss"])):
        raise NonFiniteLossError(f"[{stage}] loss is {float(m['loss'])} at step {done}; "
                                 f"stopping (last good checkpoint: {checkpointer.latest_step()})")
      elapsed = time.perf_counter() - t0
      m["tokens_per_sec"] = tokens / max(elapsed, 1e-9)
      last_log, t0 = done, time.perf_counter()
      values = {k: float(np.asarray(v)) for k, v in m.items()}
      if on_log is not None:
        values.update(on_log(state, done))
      writer.write(stage, done, values)
      bar.set_postfix(loss=f"{values['loss']:.4f}")
    if checkpointer.should_save(done, last):
      checkpointer.save(done, state)
  bar.close()
  return state
