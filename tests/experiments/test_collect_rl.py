"""experiments/real/collect_rl.py: mean +- standard error over seeds, the two-SE verdict,
and the table / JSON / plot files, on workdirs written here."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytest.importorskip("matplotlib", reason="the plot needs matplotlib (the notebooks extra)")


def _workdir(root, seed, ref, pol):
  w = root / f"run_s{seed}"
  w.mkdir()
  s = {"eval/verified_accuracy/reference": ref, "eval/verified_accuracy/policy": pol,
       "eval/win_rate_vs_reference": 0.5 + (pol - ref) / 2, "eval/kl_to_reference": 1.0,
       "eval/format_rate/reference": 1.0, "eval/format_rate/policy": 1.0,
       "eval/lenient_accuracy/reference": ref, "eval/lenient_accuracy/policy": pol,
       "eval/length/reference": 5.0, "eval/length/policy": 5.0, "eval/judge/samples": 80.0,
       "wall_seconds": 10.0}
  (w / "summary.json").write_text(json.dumps(s))
  (w / "config.json").write_text(json.dumps({"seed": seed}))
  lines = [{"stage": "grpo", "step": 4 * i + 1, "rl/iteration": i + 1,
            "rollout/verified_accuracy": 0.1 * i} for i in range(3)]
  (w / "metrics.jsonl").write_text("\n".join(json.dumps(d) for d in lines) + "\n")
  return w


def _collect(tmp_path, pols, ref=0.3):
  for seed, p in enumerate(pols):
    _workdir(tmp_path, seed, ref, p)
  (tmp_path / "run_s0.log").write_text("not a workdir")       # the glob skips files
  out = tmp_path / "table"
  r = subprocess.run([sys.executable, os.path.join(REPO, "experiments", "real", "collect_rl.py"),
                      f"--runs={tmp_path}/run_s*", f"--out={out}"], capture_output=True,
                     text=True, cwd=REPO, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout, json.load(open(f"{out}.json")), out


def test_mean_and_standard_error_of_the_gain(tmp_path):
  pols = [0.55, 0.744, 0.613]
  out, res, prefix = _collect(tmp_path, pols)
  gain = np.array(pols) - 0.3
  mean, se = res["mean_se"]["gain"]
  assert mean == pytest.approx(gain.mean())
  assert se == pytest.approx(gain.std(ddof=1) / np.sqrt(3))
  assert f"{gain.mean():+.3f} +- {se:.3f} (improved" in out
  assert len(res["runs"]) == 3
  assert os.path.getsize(f"{prefix}.png") > 1000 and os.path.exists(f"{prefix}.md")


def test_a_gain_inside_two_standard_errors_is_no_difference(tmp_path):
  out, res, _ = _collect(tmp_path, [0.2, 0.5, 0.3])    # gains -0.1, +0.2, 0.0
  assert "no difference (inside two standard errors)" in out
