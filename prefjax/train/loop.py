"""The training loop for one stage: resume, step, log, checkpoint. Reads top to bottom.

Faults it survives:
* SIGTERM / SIGINT (preemption, Ctrl-C): the current step finishes, that step is
  checkpointed, and ``Preempted`` is raised (the CLI exits with code 75); re-running the
  same command resumes from it.
* an unreadable or mismatched checkpoint: a warning, and the previous valid one is used
  (``Checkpointer.restore_latest_valid``).
* a non-finite loss: stop (``nonfinite="stop"``, ``NonFiniteLossError``) or skip the update
  (``"skip"``, counted as ``train/skipped_steps``) until ``max_skips_in_a_row``. A state
  with a non-finite loss is never checkpointed, so the last checkpoint is always good.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from prefjax import distributed
from prefjax.errors import ConfigError, PrefjaxError
from prefjax.train.checkpoint import Checkpointer
from prefjax.train.metrics_writer import MetricsWriter

NONFINITE_POLICIES = ("stop", "skip")


class NonFiniteLossError(PrefjaxError, RuntimeError):
  """Training stopped because the loss became NaN or infinite."""


class Preempted(PrefjaxError):
  """A SIGTERM/SIGINT stopped the stage after ``step`` was checkpointed."""

  def __init__(self, stage: str, step: int, signal_name: str, directory: str):
    self.stage, self.step, self.signal_name, self.directory = stage, step, signal_name, directory
    super().__init__(f"[{stage}] {signal_name} received; checkpoint at step {step} written "
                     f"({directory}); re-run the same command to resume")


class _StopFlag:
  """Set by SIGTERM/SIGINT while a stage runs; the previous handlers come back afterwards."""

  def __init__(self):
    self.signal_name: str | None = None

  def __call__(self, signum, frame):
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt   # a second Ctrl-C: stop now, without the checkpoint
    self.signal_name = signal.Signals(signum).name

  @contextlib.contextmanager
  def installed(self, enabled: bool):
    if not enabled or threading.current_thread() is not threading.main_thread():
      yield self     # signal handlers can only be set from the main thread
      return
    old = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      yield self
    finally:
      for s, h in old.items():
        signal.signal(s, h)

  def agreed(self) -> bool:
    """True when any process got a signal. Every process must checkpoint the same step
    (Orbax saves are collective), so with several processes the flag is all-reduced each
    step (one tiny host collective)."""
    local = self.signal_name is not None
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.int32(local))
    if self.signal_name is None and np.any(flags):
      self.signal_name = "SIGTERM (on another process)"
    return bool(np.any(flags))


class NoCheckpoints:
  """A ``Checkpointer`` stand-in that saves nothing: short in-memory runs (study grids)."""
  directory = None

  def restore_latest_valid(self, state, state_shardings):
    return None, state

  def should_save(self, step, last):
    return False

  def save(self, step, state, wait=None):
    pass

  def latest_step(self):
    return None

  def wait(self):
    pass

  def close(self):
    pass


def stage_checkpointer(directory: str, *, every: int, keep: int):
  """A ``Checkpointer`` saving every ``every`` steps under ``directory``, or
  ``NoCheckpoints`` for ``every`` <= 0 (nothing written: a short in-memory run)."""
  if every <= 0:
    return NoCheckpoints()
  return Checkpointer(directory, every=every, keep=keep)


class LastValues:
  """A ``MetricsWriter`` stand-in that keeps only the last metrics line (``.values``)."""

  def __init__(self):
    self.values = {}

  def truncate(self, stage, step):
    pass

  def write(self, stage, step, values):
    self.values = dict(values, step=step)


def resume(stage: str, checkpointer: Checkpointer, state, state_shardings):
  """(start step, state): the newest valid checkpoint, or (0, state) when there is none."""
  start, state = checkpointer.restore_latest_valid(state, state_shardings)
  if start is not None:
    print(f"[{stage}] resuming from checkpoint at step {start} "
          f"({checkpointer.directory})", flush=True)
  return start or 0, state


def run_stage(stage: str, *, train_step: Callable, state, state_shardings, ref_params,
              batches, batch_sharding, num_steps: int, checkpointer: Checkpointer,
              writer: MetricsWriter, log_every: int = 10, on_log: Callable | None = None,
              progress: bool = True, nonfinite: str = "stop", max_skips_in_a_row: int = 10,
              handle_signals: bool = True, global_batch_size: int | None = None):
  """Runs ``train_step`` from the last valid checkpoint (if any) to ``num_steps``.

  ``batches[i]`` is the batch of step i (a random-access dataset), so resuming needs only
  the train state. Batches made from the policy itself (RL rollouts, online preference
  pairs) come from an object with ``batch_from_state(step, state) -> batch`` instead
  (``prefjax.train.rounds.RoundBatches``), which keeps what it made resumable on its own.
  Returns the final state.

  nonfinite: "stop" raises NonFiniteLossError at the first logged non-finite loss; "skip"
    needs a ``train_step`` built with ``make_train_step(..., skip_nonfinite=True)`` (it
    keeps the old params and reports ``train/skipped``) and raises after
    ``max_skips_in_a_row`` consecutive skipped steps.
  handle_signals: catch SIGTERM/SIGINT during the stage (see ``Preempted``).
  global_batch_size: with several processes, ``batches[i]`` may hold only this host's rows
    (``prefjax.data.host_batches.local_batches``); give the global batch size then.
  """
  if nonfinite not in NONFINITE_POLICIES:
    raise ConfigError(f"nonfinite={nonfinite!r}: expected one of {NONFINITE_POLICIES}")
  start, state = resume(stage, checkpointer, state, state_shardings)
  if distributed.is_main():
    writer.truncate(stage, start)
  if start >= num_steps:
    return state

  stop = _StopFlag()
  with stop.installed(handle_signals):
    return _loop(stage, stop, start, train_step=train_step, state=state,
                 ref_params=ref_params, batches=batches, batch_sharding=batch_sharding,
                 num_steps=num_steps, checkpointer=checkpointer, writer=writer,
                 log_every=log_every, on_log=on_log, progress=progress, nonfinite=nonfinite,
                 max_skips_in_a_row=max_skips_in_a_row, global_batch_size=global_batch_size)


def _check_finite(stage, m, done, checkpointer):
  loss = float(m["loss"])
  if not math.isfinite(loss):
    raise NonFiniteLossError(f"[{stage}] loss is {loss} at step {done}; stopping "
                             f"(last good checkpoint: {checkpointer.latest_step()})")


def _loop(stage, stop, start, *, train_step, state, ref_params, batches, batch_sharding,
          num_steps, checkpointer, writer, log_every, on_log, progress, nonfinite,
          max_skips_in_a_row, global_batch_size):
  main = distributed.is_main()
  bar = tqdm(range(start, num_steps), desc=stage, disable=not (progress and main),
             dynamic_ncols=True)
  last_log, t0 = start, time.perf_counter()
  skipped, in_a_row, compiled, tokens_sum = 0, 0, 0, None
  # Steps that compiled (a new batch shape) are counted in each metrics line, so timings
  # can leave them out; a jitted step exposes its cache size (0 otherwise).
  cache_size = getattr(train_step, "_cache_size", lambda: 0)
  from_state = getattr(batches, "batch_from_state", None)
  for step in bar:
    raw = from_state(step, state) if from_state is not None else batches[step]
    batch = distributed.host_batch(raw, batch_sharding, global_batch_size)
    before = cache_size()
    state, m = train_step(state, batch, ref_params)
    compiled += cache_size() > before
    # Real tokens since the last metrics line, summed on the device (no sync per step):
    # bucketed and greedily planned batches differ in size.
    tokens_sum = m["data/tokens"] if tokens_sum is None else tokens_sum + m["data/tokens"]
    done = step + 1
    last = done == num_steps
    if nonfinite == "skip":   # one scalar read per step: "in a row" must be exact
      if "train/skipped" not in m:
        raise PrefjaxError('nonfinite="skip" needs make_train_step(..., skip_nonfinite=True)')
      if float(m["train/skipped"]):
        skipped, in_a_row = skipped + 1, in_a_row + 1
        if in_a_row >= max_skips_in_a_row:
          raise NonFiniteLossError(
              f"[{stage}] {in_a_row} steps in a row had a non-finite loss or gradient (up to "
              f"step {done}); stopping (last good checkpoint: {checkpointer.latest_step()})")
      else:
        in_a_row = 0
    if done % log_every == 0 or last or checkpointer.should_save(done, last):
      m = jax.device_get(m)
      m.pop("data/tokens")
      tokens, tokens_sum = float(jax.device_get(tokens_sum)), None
      if nonfinite == "stop":
        _check_finite(stage, m, done, checkpointer)
      else:
        m.pop("train/skipped")
        m["train/skipped_steps"] = skipped    # since the previous metrics line
        skipped = 0
      elapsed = time.perf_counter() - t0      # train steps only: hooks and saves excluded
      m["tokens_per_sec"] = tokens / max(elapsed, 1e-9)
      m["seconds_per_step"] = elapsed / (done - last_log)
      m["compiled_steps"] = compiled
      last_log, compiled = done, 0
      values = {k: float(np.asarray(v)) for k, v in m.items()}
      if on_log is not None:
        values.update(on_log(state, done))
      if main:
        writer.write(stage, done, values)
      bar.set_postfix(loss=f"{values['loss']:.4f}")
      logged = True
    else:
      logged = False
    saving = checkpointer.should_save(done, last)
    preempted = stop.agreed()           # the same answer on every process
    if preempted and not saving and nonfinite == "stop":   # never checkpoint a NaN state
      _check_finite(stage, jax.device_get({"loss": m["loss"]}), done, checkpointer)
    if saving or preempted:
      checkpointer.save(done, state, wait=True if (last or preempted) else None)
    if logged or saving:
      t0 = time.perf_counter()
    if preempted:
      bar.close()
      raise Preempted(stage, done, stop.signal_name, checkpointer.directory)
  bar.close()
  checkpointer.wait()
  return state
