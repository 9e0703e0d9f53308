"""Shared fixtures: one tiny model used across the suite; XLA compiles at LLVM -O1 here.

The suite is compile-bound: hundreds of distinct small programs on tiny models, each compiled
once. XLA:CPU's LLVM optimisation level 1 compiles them faster (measured on the 2-core
machine: tests/train/test_layouts_step.py 166 s at the default level, 138 s at -O1; -O0 gave
104 s but changed float32 reduction order enough to break the 1e-6 equality tests of
gradient accumulation and LoRA); the matmuls are library calls either way. Tests that run a
long real-model job in a subprocess pass ``full_opt_env()`` (the caller's own XLA_FLAGS)
instead. PREFJAX_TEST_XLA_O1=0, or any ``xla_backend_optimization_level`` already in
XLA_FLAGS, leaves the flags alone.
"""
import os

ORIGINAL_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
if ("xla_backend_optimization_level" not in ORIGINAL_XLA_FLAGS
    and os.environ.get("PREFJAX_TEST_XLA_O1", "1") != "0"):
  # Before any JAX backend starts (it reads XLA_FLAGS once); subprocesses inherit it.
  os.environ["XLA_FLAGS"] = (ORIGINAL_XLA_FLAGS + " --xla_backend_optimization_level=1").strip()


def full_opt_env(**extra):
  """os.environ with the caller's original XLA_FLAGS, for execution-bound subprocesses."""
  env = dict(os.environ, **extra)
  if ORIGINAL_XLA_FLAGS:
    env["XLA_FLAGS"] = ORIGINAL_XLA_FLAGS
  else:
    env.pop("XLA_FLAGS", None)
  return env


import fcntl  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from prefjax.models import Transformer, make_config  # noqa: E402

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _release_memory():
  """Hands back what this worker holds and no test needs: compiled programs, garbage, free
  malloc pages."""
  import ctypes
  import gc
  jax.clear_caches()
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):   # not glibc
    pass


_ALONE_SEEN = [False]   # this worker saw a test running alone at its last light test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """Tests marked ``alone`` run with no heavy test beside them on another pytest-xdist worker:
  each holds an exclusive lock on a file shared by the run's workers, every ``slow`` test
  (real models, end-to-end runs) a shared one, from its setup (module fixtures included) to
  its teardown. Quick tests take no lock: they run beside an alone test, so the other worker
  is not idle for the ~25 minutes the studies take. A worker about to wait for the lock, to
  run alone, or to run quick tests beside an alone test first hands back the memory it holds
  between tests (a worker grows to 5-6 GB over the suite). Each real-model study subprocess
  peaks at ~10 GB RSS; beside the workers and another real-model test, a 24 GB machine runs
  out and the kernel kills one with no traceback."""
  run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if run is None:                  # one process (-n 0): nothing runs beside anything
    yield
    return
  alone = item.get_closest_marker("alone") is not None
  heavy = alone or item.get_closest_marker("slow") is not None
  with open(os.path.join(tempfile.gettempdir(), f"prefjax-tests-{run}.lock"), "a") as f:
    if alone:
      _release_memory()
      fcntl.flock(f, fcntl.LOCK_EX)
    else:
      try:
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        _ALONE_SEEN[0] = False
      except BlockingIOError:      # a test runs alone: wait, or run beside it, with less held
        if heavy or not _ALONE_SEEN[0]:
          _release_memory()
        _ALONE_SEEN[0] = True
        if heavy:
          fcntl.flock(f, fcntl.LOCK_SH)
      if not heavy:
        fcntl.flock(f, fcntl.LOCK_UN)
    yield


@pytest.fixture(scope="session")
def tiny_cfg():
  return make_config(None, vocab_size=13, overrides=dict(
      dim=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, mlp_dim=24, max_len=32))


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
  """(model, graphdef, params) with non-trivial norm weights."""
  model = Transformer(tiny_cfg, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype)
      if "scale" in jax.tree_util.keystr(p) else x, params)
  return nnx.merge(graphdef, params), graphdef, params
