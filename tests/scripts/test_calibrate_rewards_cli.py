"""scripts/calibrate_rewards.py end to end on small files: bad rows, outputs, one-line errors."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prefjax.rewards import ScoresError, read_scores

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SCRIPT = os.path.join(_ROOT, "scripts", "calibrate_rewards.py")


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, _SCRIPT, *args], capture_output=True, text=True,
                        env=env, timeout=300)


def _pairs(n_pairs, seed=0):
  """Rows of pairs whose reward carries a 0.004 * length bias; chosen is better by 0.5."""
  rng = np.random.default_rng(seed)
  rows = []
  for p in range(n_pairs):
    for chosen in (True, False):
      words = int(rng.integers(10, 300))
      rows.append({"id": f"{p}-{int(chosen)}", "pair_id": p, "chosen": chosen,
                   "text": "word " * words,
                   "reward": float(rng.normal() + 0.5 * chosen + 0.004 * 5 * words)})
  return rows


def _write_jsonl(path, rows, extra_lines=()):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
    for line in extra_lines:
      f.write(line + "\n")


def test_cli_lwr_skips_bad_rows_and_writes_outputs(tmp_path):
  rows = _pairs(60)
  scores = tmp_path / "scores.jsonl"
  _write_jsonl(scores, rows, extra_lines=[
      '{"id": "nan", "pair_id": 999, "chosen": true, "reward": NaN, "text": "x"}',  # line 121
      '{"id": "inf", "reward": Infinity, "text": "x"}',  # line 122
      '{"id": "nofeature", "reward": 1.0}',  # line 123
      '{"id": "broken", "reward": ',  # line 124
      "",  # blank lines are not rows
      '{"id": "badlabel", "reward": 1.0, "text": "x", "chosen": "maybe"}',  # line 126
  ])
  out = tmp_path / "out"
  proc = _run("--scores", str(scores), "--method", "lwr", "--out", str(out), "--frac", "0.5")
  assert proc.returncode == 0, proc.stderr
  assert f"{scores}:123: field 'chars'" in proc.stderr
  assert "Traceback" not in proc.stderr
  written = [json.loads(line) for line in open(out / "calibrated.jsonl")]
  assert [r["id"] for r in written] == [r["id"] for r in rows]  # all good rows, in order
  for r in written:
    assert r["calibrated_reward"] == pytest.approx(r["reward"] - r["bias"])
    assert r["feature_value"] == len(r["text"])
  summary = json.load(open(out / "summary.json"))
  assert summary["rows/valid"] == 120 and summary["rows/bad"] == 5
  assert [b["line"] for b in summary["bad_rows"]] == [121, 122, 123, 124, 126]
  assert [b["field"] for b in summary["bad_rows"]] == ["reward", "reward", "chars", "<json>",
                                                       "chosen"]
  assert summary["pairs/complete"] == 60 and summary["pairs/incomplete"] == 0
  before, after = summary["before"], summary["after"]
  assert after["ranking/accuracy"] > before["ranking/accuracy"]
  assert abs(after["spearman/reward_feature"]) < before["spearman/reward_feature"]
  assert (out / "calibration.png").stat().st_size > 0


def test_cli_mean_on_csv_with_feature_column(tmp_path):
  rows = _pairs(80, seed=1)
  scores = tmp_path / "scores.csv"
  with open(scores, "w", newline="") as f:
    writer = csv.DictWriter(f, ["id", "pair_id", "label", "tokens", "reward"])
    writer.writeheader()
    for r in rows:
      writer.writerow({"id": r["id"], "pair_id": r["pair_id"], "tokens": len(r["text"].split()),
                       "label": "chosen" if r["chosen"] else "rejected", "reward": r["reward"]})
    writer.writerow({"id": "x", "pair_id": "", "label": "", "tokens": "", "reward": "1.0"})
  out = tmp_path / "out"
  proc = _run("--scores", str(scores), "--method", "mean", "--feature", "tokens",
              "--min_count", "5", "--out", str(out))
  assert proc.returncode == 0, proc.stderr
  summary = json.load(open(out / "summary.json"))
  assert summary["rows/valid"] == 160 and summary["rows/bad"] == 1
  assert summary["bad_rows"][0]["line"] == 162 and summary["bad_rows"][0]["field"] == "tokens"
  win = [r for r in rows if r["chosen"]]
  lose = [r for r in rows if not r["chosen"]]
  d = np.mean([abs(len(a["text"].split()) - len(b["text"].split()))
               for a, b in zip(win, lose)]) / 4.0
  assert summary["half_width"] == pytest.approx(d)
  written = [json.loads(line) for line in open(out / "calibrated.jsonl")]
  assert len(written) == 160
  assert sum(not r["calibrated"] for r in written) == summary["rows/uncalibrated"]


def test_cli_missing_column_is_a_one_line_error(tmp_path):
  scores = tmp_path / "scores.jsonl"
  _write_jsonl(scores, [{"id": i, "score": 1.0, "text": "abc"} for i in range(30)])
  proc = _run("--scores", str(scores), "--method", "lwr", "--out", str(tmp_path / "out"))
  assert proc.returncode == 1
  assert proc.stderr.strip() == (f"error: {scores}: required column 'reward' is missing in "
                                 "every row")


def test_read_scores_too_few_and_missing_file(tmp_path):
  with pytest.raises(ScoresError, match="no such file"):
    read_scores(str(tmp_path / "nope.jsonl"))
  scores = tmp_path / "few.jsonl"
  _write_jsonl(scores, [{"reward": 1.0, "chars": 3}, {"reward": 2.0, "chars": 5}])
  proc = _run("--scores", str(scores), "--method", "lwr", "--out", str(tmp_path / "out"))
  assert proc.returncode == 1
  assert proc.stderr.strip().startswith(f"error: {scores}: too few valid rows to calibrate: 2")
  assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_lwr_warns_when_one_feature_value_outnumbers_the_window(tmp_path):
  rows = [{"id": i, "text": "ab" if i < 60 else "x" * (3 + i), "reward": float(i % 7)}
          for i in range(100)]
  scores = tmp_path / "scores.jsonl"
  _write_jsonl(scores, rows)
  proc = _run("--scores", str(scores), "--method", "lwr", "--out", str(tmp_path / "out"))
  assert proc.returncode == 0, proc.stderr
  warning = [x for x in proc.stderr.splitlines() if "LOWESS window" in x]
  assert warning == [f"warning: {scores}: 60 of 100 rows have feature 2, more than a LOWESS "
                     "window of --frac 0.3 holds: that value's bias is one row's reward "
                     "(statsmodels' rule); --frac 0.615 fits it by the group's mean"]
  proc = _run("--scores", str(scores), "--method", "lwr", "--frac", "0.62",
              "--out", str(tmp_path / "out2"))
  assert proc.returncode == 0 and "LOWESS window" not in proc.stderr, proc.stderr
