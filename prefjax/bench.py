"""Helpers of ``scripts/benchmark_*.py``: each side of a side-by-side measurement runs in a
fresh process (its own threads, its own peak RSS), a matmul peak measured in the same run,
and the SmolLM2 GGUF exported to a Hugging Face directory for the PyTorch peers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Mapping

RESULT = "RESULT "


def run_worker(script: str, name: str, args: dict, *, threads: int | None = None,
               timeout: float | None = None) -> dict:
  """Runs ``script --worker=NAME --worker_args=FILE`` (``args`` as JSON in FILE) in a fresh
  process; returns its ``RESULT`` line's dict plus ``peak_rss_mb``, or ``{"error": ...}``
  with the last line of its output (and the last 25 as ``log_tail``)."""
  env = dict(os.environ)
  if threads:
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
  path = os.path.join(tempfile.mkdtemp(prefix="bench_args_"), "args.json")
  with open(path, "w") as f:                       # token ids are too long for a command line
    json.dump(args, f)
  cmd = [sys.executable, os.path.abspath(script), f"--worker={name}", f"--worker_args={path}"]
  with tempfile.TemporaryFile("w+") as out:
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    t0 = time.monotonic()
    while True:
      pid, status, ru = os.wait4(p.pid, os.WNOHANG)
      if pid:
        break
      if timeout is not None and time.monotonic() - t0 > timeout:
        p.kill()
        p.wait()
        return {"error": f"timed out after {timeout:g} s"}
      time.sleep(0.2)
    out.seek(0)
    text = out.read()
  last = [l for l in text.splitlines() if l.startswith(RESULT)]
  if status != 0 or not last:
    tail = text.strip().splitlines()
    peak = f"peak RSS {ru.ru_maxrss / 1024:.0f} MB"
    if os.WIFSIGNALED(status):   # e.g. the kernel's OOM killer: no traceback to show
      sig = os.WTERMSIG(status)
      why = " (out of memory?)" if sig == signal.SIGKILL else ""
      return {"error": f"killed by signal {sig}{why}, {peak}", "log_tail": tail[-25:]}
    return {"error": tail[-1][:400] if tail else f"exit status {status}", "log_tail": tail[-25:]}
  res = json.loads(last[-1][len(RESULT):])
  res["peak_rss_mb"] = ru.ru_maxrss / 1024
  return res


def worker_main(workers: Mapping[str, Callable[[dict], dict]], name: str, args_path: str):
  """The worker side of ``run_worker``: runs ``workers[name]`` and prints its RESULT line."""
  with open(args_path) as f:
    res = workers[name](json.load(f))
  print(RESULT + json.dumps(res), flush=True)


def matmul_flops(n: int = 2048, dtype: str = "float32", repeats: int = 5) -> float:
  """FLOP/s of one jitted n x n x n matmul in jax, best of ``repeats``."""
  import jax
  import jax.numpy as jnp
  a = jnp.ones((n, n), jnp.dtype(dtype))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def export_hf(gguf: str, out_dir: str) -> str:
  """The GGUF as a Hugging Face directory (``scripts/convert.py``), for transformers / TRL."""
  convert = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "scripts", "convert.py")
  subprocess.run([sys.executable, convert, f"--from={gguf}", f"--to={out_dir}",
                  "--to_format=hf"], check=True, capture_output=True)
  return out_dir
