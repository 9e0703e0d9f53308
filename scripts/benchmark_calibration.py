r"""Times RC-LWR's LOWESS against statsmodels on one synthetic length-biased score set.

  python scripts/benchmark_calibration.py --n 300000 --frac 0.3 --it 3 \
      --json /tmp/calibration_benchmark.jsonl

Integer lengths c ~ round(exp(N(5.5, 0.9))) clipped to [10, 3000], reward = a planted bias
1.5 * sigmoid((c - 400) / 150) + 0.0005 * c plus N(0, 1) noise and 2% outliers. Both fits run
side by side in this process: statsmodels (``lowess(..., delta=0, return_sorted=False)``, the
median of --sm_repeats runs) and prefjax (first call including compilation, then the median of
--repeats warm calls, each ending in ``block_until_ready``). Prints the timings, their ratio
and the largest absolute difference of the fits, and appends one JSON line to --json.
With --continuous, c is continuous (no ties) and both use --delta; --sigma and --noclip make
it long-tailed (e.g. --sigma 1.5 --noclip: range ~1e5). --nox64 runs prefjax on float32 input
(its default dtype). The persistent compilation cache (prefjax.compile_cache) is on unless
PREFJAX_COMPILE_CACHE=0, so "first call" is a cold compile only on a cold cache.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags
import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from prefjax import compile_cache  # noqa: E402
from prefjax.rewards import lowess  # noqa: E402

_N = flags.DEFINE_integer("n", 300_000, "Number of scored responses.")
_FRAC = flags.DEFINE_float("frac", 0.3, "LOWESS window fraction.")
_IT = flags.DEFINE_integer("it", 3, "Robustifying iterations.")
_DELTA = flags.DEFINE_float("delta", 0.0, "Interpolation distance (both implementations).")
_CONTINUOUS = flags.DEFINE_bool("continuous", False, "Continuous lengths (no ties).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Warm prefjax runs (median reported).")
_SM_REPEATS = flags.DEFINE_integer("sm_repeats", 1, "statsmodels runs (median reported).")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")
_SIGMA = flags.DEFINE_float("sigma", 0.9, "Log-normal sigma of the lengths.")
_CLIP = flags.DEFINE_bool("clip", True, "Clip lengths to [10, 3000].")
_X64 = flags.DEFINE_bool("x64", True, "Enable float64 (else prefjax gets float32 rewards).")
_JSON = flags.DEFINE_string("json", None, "Append the result as one JSON line to this file.")


def _data(n, seed, continuous, sigma=0.9, clip=True):
  rng = np.random.default_rng(seed)
  c = np.exp(rng.normal(5.5, sigma, n))
  if clip:
    c = np.clip(c, 10, 3000)
  if not continuous:
    c = np.round(c)
  bias = 1.5 / (1.0 + np.exp(-(c - 400.0) / 150.0)) + 0.0005 * c
  r = bias + rng.normal(0.0, 1.0, n)
  out = rng.random(n) < 0.02
  r[out] += rng.normal(0.0, 10.0, out.sum())
  return c, r


def _timed(fn, repeats):
  times, result = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), result


def main(argv):
  del argv
  from prefjax.extras import require
  sm_version = require("statsmodels", "calibration", "the statsmodels comparison").__version__
  from statsmodels.nonparametric.smoothers_lowess import lowess as sm_lowess
  cache = compile_cache.enable()
  jax.config.update("jax_enable_x64", _X64.value)
  c, r = _data(_N.value, _SEED.value, _CONTINUOUS.value, _SIGMA.value, _CLIP.value)
  r_in = r if _X64.value else r.astype(np.float32)
  kw = dict(frac=_FRAC.value, it=_IT.value, delta=_DELTA.value)

  def ours():
    return np.asarray(lowess(r_in, c, **kw).block_until_ready())

  first_s, _ = _timed(ours, 1)
  ours_s, fit = _timed(ours, _REPEATS.value)
  sm_s, ref = _timed(lambda: sm_lowess(r, c, return_sorted=False, **kw), _SM_REPEATS.value)
  result = {
      "n": _N.value, "unique_x": int(np.unique(c).size), "continuous": _CONTINUOUS.value,
      "sigma": _SIGMA.value, "clip": _CLIP.value, "x64": _X64.value,
      "compile_cache": str(cache) if cache else None,
      **kw, "statsmodels_s": round(sm_s, 4), "prefjax_s": round(ours_s, 4),
      "prefjax_first_call_s": round(first_s, 4), "speedup": round(sm_s / ours_s, 1),
      "max_abs_diff": float(np.max(np.abs(fit.astype(np.float64) - ref))),
      "repeats": _REPEATS.value, "sm_repeats": _SM_REPEATS.value,
      "jax": jax.__version__, "statsmodels": sm_version, "device": str(jax.devices()[0]),
      "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
      "load_avg_1m": round(os.getloadavg()[0], 2),
  }
  print(f"n={result['n']} (unique x {result['unique_x']}), frac={_FRAC.value}, "
        f"it={_IT.value}, delta={_DELTA.value}")
  print(f"statsmodels  {sm_s:8.3f} s (median of {_SM_REPEATS.value})")
  print(f"prefjax      {ours_s:8.3f} s (median of {_REPEATS.value} warm calls; first call "
        f"incl. compile {first_s:.3f} s)")
  print(f"speedup      {result['speedup']:8.1f} x   max |fit diff| {result['max_abs_diff']:.3g}")
  line = json.dumps(result)
  print(line)
  if _JSON.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  from prefjax.cli import main_guard   # a missing statsmodels is one line, not a traceback
  main_guard(lambda: app.run(main))
