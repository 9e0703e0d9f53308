"""Multi-process runs (TPU pod slices, GPU clusters): ``jax.distributed`` setup and per-host data.

JAX is multi-controller: every host runs the same program on its own devices, and
``jax.devices()`` lists the devices of all processes, so ``sharding.make_mesh()`` already
builds one global mesh. What changes with several processes:

* ``initialize()`` must run before any other JAX call;
* a global batch array is assembled from the rows this host holds (``host_batch``), and
  each host only needs to encode those rows (``process_rows``;
  ``prefjax.data.host_batches.local_batches``);
* only process 0 writes logs and summaries (``is_main``); Orbax checkpoints are written by
  every process cooperatively (each its own shards).

On CPU (tests, 2 local processes) JAX >= 0.5 uses gloo collectives by default
(``jax_cpu_collectives_implementation``); older versions need it set to ``"gloo"`` before
``initialize`` -- done here for them.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Sharding

from prefjax.errors import ConfigError

ENV_COORDINATOR = "PREFJAX_COORDINATOR"       # host:port of process 0
ENV_NUM_PROCESSES = "PREFJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "PREFJAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"${name}={value!r} is not an integer") from None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None,
               timeout_s: int = 300) -> bool:
  """Calls ``jax.distributed.initialize`` once; True if it did, False when already done or
  when nothing is configured or detected (a plain single-process run).

  Arguments left None are read from ``$PREFJAX_COORDINATOR``, ``$PREFJAX_NUM_PROCESSES``,
  ``$PREFJAX_PROCESS_ID``; those still None are left to JAX's cluster auto-detection
  (Cloud TPU pod slices, SLURM ``srun``, Open MPI, GKE; also ``$JAX_COORDINATOR_ADDRESS``),
  which fills all of them. Call it before any other JAX function (an array,
  ``jax.devices()``).
  """
  if jax.distributed.is_initialized():
    return False
  coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
  num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ConfigError(f"distributed: process_id={process_id} is not in [0, {num_processes})")
  if coordinator_address is not None and ":" not in coordinator_address:
    raise ConfigError(f"distributed: coordinator address {coordinator_address!r} needs a port "
                      "(host:port)")
  try:   # JAX < 0.5 defaults to no CPU collectives; newer ones to gloo.
    if jax.config.jax_cpu_collectives_implementation is None:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except AttributeError:
    pass
  explicit = coordinator_address is not None or num_processes is not None
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids,
                               initialization_timeout=timeout_s)
  except ValueError as e:
    undefined = "should be defined" in str(e) or "must be defined" in str(e)
    if undefined and not explicit:
      return False   # nothing given and no cluster detected: a plain single-process run
    if undefined:
      raise ConfigError(f"distributed: {e} (set ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES} "
                        f"and ${ENV_PROCESS_ID}, or the matching arguments)") from None
    raise
  return True


def is_main() -> bool:
  """True on process 0, the one that writes logs, summaries and exports."""
  return jax.process_index() == 0


def process_rows(global_batch_size: int, sharding: Sharding) -> tuple[int, int] | None:
  """[lo, hi): the rows of a ``[global_batch_size, ...]`` batch that this process's devices
  hold under ``sharding`` (the batch axis sharded over data/fsdp), or None if they are not
  one contiguous range (then ``host_batch`` falls back to the full batch)."""
  index_map = sharding.addressable_devices_indices_map((global_batch_size,))
  spans = sorted({(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
                  for s in index_map.values()})
  lo, hi = spans[0]
  for a, b in spans[1:]:
    if a > hi:
      return None
    hi = max(hi, b)
  return lo, hi


def host_batch(batch: dict, sharding: Sharding, global_batch_size: int | None = None):
  """A global ``jax.Array`` batch from numpy rows on this host.

  ``batch`` holds either the full global batch (every row; this host slices its own) or
  only this host's rows ``process_rows(...)`` (pass ``global_batch_size``). With one
  process it is ``jax.device_put``.
  """
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  n = len(next(iter(batch.values())))
  global_batch_size = global_batch_size or n
  rows = process_rows(global_batch_size, sharding)
  if rows is None:   # interleaved layout: index the full batch per device
    if n != global_batch_size:
      raise ValueError("this host's rows are not contiguous; pass the full global batch")
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in batch.items()}
  lo, hi = rows
  local = batch if n == hi - lo and n != global_batch_size else {
      k: v[lo:hi] for k, v in batch.items()}
  return {k: jax.make_array_from_process_local_data(
      sharding, np.asarray(v), (global_batch_size,) + tuple(v.shape[1:]))
          for k, v in local.items()}

