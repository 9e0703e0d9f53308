"""XLA:CPU's instruction scheduler, chosen for memory when a run asks to save memory.

XLA:CPU schedules for concurrency by default (a breadth-first order that lets independent
operations run side by side). That order ignores the point of rematerialisation: on a
30-layer SmolLM2-135M gradient over one 1024-token row it keeps every block's recomputed
activations alive (``memory_analysis``: remat="block" grows 78 MB per layer, like no remat),
while the depth-first memory scheduler keeps them flat (0.133 GiB at 2 layers, 0.147 GiB at
8). The DPO step at max_len 1024 (two packed rows of 2,048 tokens) needs 16.9 GB of
temporaries by default and 1.76 GB with remat="block" under the memory scheduler.

XLA reads the choice from ``XLA_FLAGS`` once, when the CPU backend starts, so it is made
before the first JAX computation of a run (``scripts/train.py`` does so for
``model.overrides.remat`` != "none"). A flag the user already set in ``XLA_FLAGS`` wins.
"""
from __future__ import annotations

import os

FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):   # a JAX without the probe: assume started
    return True


def prefer_memory_scheduler() -> str:
  """Asks XLA:CPU for its memory-minimising scheduler; returns what is in effect:
  "memory", "user XLA_FLAGS" (the user chose) or "concurrency (backend already started)"."""
  flags = os.environ.get("XLA_FLAGS", "")
  if FLAG in flags:
    return "user XLA_FLAGS"
  if _backends_started():
    return "concurrency (backend already started)"
  os.environ["XLA_FLAGS"] = f"{flags} --{FLAG}=false".strip()
  return "memory"
