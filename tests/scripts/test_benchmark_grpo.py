"""scripts/benchmark_grpo.py without running either side: the prompts each iteration draws,
the samples/s arithmetic, and that neither side's imports pull in the other's framework."""
import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark_grpo.py"


@functools.cache
def _load_script():
  """The script as a module (once); the absl flags it defines are removed again, so other
  scripts that tests load in the same process can define flags of the same names."""
  from absl import flags
  before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location("benchmark_grpo", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)
  return mod


def test_iteration_prompts_are_the_rl_stage_draws():
  mod = _load_script()
  order = mod.iteration_prompts(seed=3, iterations=4, per_iteration=5)
  assert len(order) == 4 and all(len(o) == 5 and len(set(o)) == 5 for o in order)
  for it, picks in enumerate(order):     # prefjax.rl.stage.run_rl_stage's draw
    expected = np.random.default_rng([3, it]).choice(mod.N_TRAIN, 5, replace=False)
    assert picks == [int(i) for i in expected]
  assert mod.iteration_prompts(3, 4, 5) == order
  assert mod.iteration_prompts(4, 4, 5) != order


def test_summarize_leaves_the_first_iteration_out():
  mod = _load_script()
  res = {"iterations": [
      {"seconds": 30.0, "completion_tokens": 10.0, "xla_compilations": 5,
       "compiled_train_steps": 1},
      {"seconds": 2.0, "completion_tokens": 20.0, "xla_compilations": 0,
       "compiled_train_steps": 0},
      {"seconds": 6.0, "completion_tokens": 30.0, "xla_compilations": 1,
       "compiled_train_steps": 0}]}
  mod.summarize(res, rows=8)
  assert res["first_iteration_seconds"] == 30.0
  assert res["steady_seconds_per_iteration"] == pytest.approx(4.0)
  assert res["samples_per_sec"] == pytest.approx(16 / 8.0)
  assert res["samples_per_sec_all"] == pytest.approx(24 / 38.0)
  assert res["mean_completion_tokens"] == pytest.approx(20.0)
  assert res["iterations_that_compiled"] == [1, 3]


def test_sides_import_only_their_own_framework():
  # The script itself and the prefjax side's modules: no torch; the script alone: no jax.
  code = (
      "import importlib.util, sys\n"
      f"spec = importlib.util.spec_from_file_location('b', {str(SCRIPT)!r})\n"
      "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
      "assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'script'\n"
      "import prefjax.train.run, prefjax.rl.stage, prefjax.cli, prefjax.data.tasks\n"
      "import prefjax.train.metrics_writer, prefjax.compile_cache\n"
      "assert 'torch' not in sys.modules, 'prefjax side imports torch'\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_unknown_side_is_a_usage_error():
  out = subprocess.run([sys.executable, str(SCRIPT), "--sides=prefjax,jaxtrl"],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode != 0
  assert "unknown jaxtrl" in out.stderr + out.stdout
