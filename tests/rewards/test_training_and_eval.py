"""A tiny reward model trained through the runner (shared step), then scripts/eval_rewards.py."""
import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from prefjax.train.config import base_config, train_section
from prefjax.train.run import run

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def _easy_jsonl(path, n=64):
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for i in range(n):
      prompt = "question " + "".join(rng.choice(list("abcdef"), 5))
      f.write(json.dumps({"prompt": prompt, "chosen": "yes, gladly", "rejected": "no",
                          "id": str(i), "subset": "easy"}) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("rm")
  data = tmp / "easy.jsonl"
  _easy_jsonl(data)
  c = base_config()
  c.stages = ("reward", "eval_reward")
  c.reward = train_section(steps=20, batch_size=8, lr=3e-3, warmup=2)
  c.reward.loss, c.reward.data = "bradley_terry", f"jsonl:{data}"
  c.reward.loss_kwargs = ml_collections.ConfigDict(dict(margin=0.0, center_coef=0.01))
  c.reward.n_pairs, c.reward.n_eval_pairs, c.reward.max_len = 1000, 16, 48
  c.data.max_len = 48
  c.model.overrides = ml_collections.ConfigDict(dict(n_layers=1, dim=32, head_dim=8, mlp_dim=64))
  c.progress, c.tensorboard, c.log_every, c.checkpoint.every = False, False, 1, 0
  summary = run(c, str(tmp / "work"))
  return tmp, summary


def test_training_improves_accuracy(trained):
  tmp, summary = trained
  rows = [json.loads(l) for l in open(tmp / "work" / "metrics.jsonl")]
  rows = [r for r in rows if r["stage"] == "reward"]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert rows[0]["rewards/accuracies"] == 0.0   # step 1 logs the zero head: all ties (wrong)
  assert rows[-1]["rewards/accuracies"] == 1.0
  assert rows[-1]["loss"] < rows[0]["loss"]
  assert summary["reward_eval/accuracy"] == 1.0


def _eval(model, data, out):
  cmd = [sys.executable, str(ROOT / "scripts" / "eval_rewards.py"), "--model", model,
         "--data", data, "--out", str(out), "--max_examples", "6"]
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
  assert res.returncode == 0, res.stderr[-2000:]
  return res


def test_eval_rewards_generic_jsonl(trained):
  tmp, _ = trained
  res = _eval(str(tmp / "work"), f"jsonl:{tmp / 'easy.jsonl'}", tmp / "ev")
  assert "| easy | easy | 6 | 1.000 |" in res.stdout
  rows = [json.loads(l) for l in open(tmp / "ev" / "scores.jsonl")]
  assert len(rows) == 12 and {r["chosen"] for r in rows} == {0, 1}
  assert all(r["chars"] == len("yes, gladly") for r in rows if r["chosen"] == 1)
  assert all(r["tokens"] == len("no") + 1 for r in rows if r["chosen"] == 0)
  from prefjax.rewards.scores_io import read_scores   # the calibration reader accepts it
  s = read_scores(str(tmp / "ev" / "scores.jsonl"), feature="chars")
  assert len(s.pairs()[0]) == 6 and not s.bad_rows


def test_eval_rewards_llmbar(trained):
  path = DATA / "llmbar" / "LLMBar_Natural.json"
  if not path.exists():
    pytest.skip("../shared/data is absent")
  tmp, _ = trained
  _eval(str(tmp / "work"), str(path), tmp / "ev2")
  res = json.load(open(tmp / "ev2" / "results.json"))
  assert res["subsets"]["LLMBar_Natural"]["n"] == 6
  assert res["sections"]["chat_hard"]["n"] == 6
  assert 0.0 <= res["overall"] <= 1.0


def test_eval_rewards_bad_model_is_one_line(tmp_path):
  cmd = [sys.executable, str(ROOT / "scripts" / "eval_rewards.py"), "--model",
         str(tmp_path), "--data", "x.jsonl", "--out", str(tmp_path / "o")]
  res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert res.returncode == 1 and "no config.json" in res.stderr
  assert "Traceback" not in res.stderr


def test_memo_scorer_scores_each_distinct_response_once():
  """Repeated (prompt, response) pairs, within a call and across calls, reach the wrapped
  scorer once; rewards, token counts and cut flags equal the unwrapped scorer's."""
  from prefjax.rewards.evaluate import MemoScorer

  class Counting:
    def __init__(self):
      self.calls = []

    def score(self, prompts, responses):
      self.calls.append(list(zip(prompts, responses)))
      self.last_tokens = np.array([len(r) for r in responses])
      self.last_truncated = np.array([len(r) > 3 for r in responses])
      return np.array([hash((p, r)) % 97 for p, r in zip(prompts, responses)], np.float32)

  inner, plain = Counting(), Counting()
  memo = MemoScorer(inner)
  calls = [(["a", "a", "b", "a"], ["x", "yyyy", "x", "x"]), (["b", "c"], ["x", "zz"])]
  for prompts, responses in calls:
    got, want = memo.score(prompts, responses), plain.score(prompts, responses)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(memo.last_tokens, plain.last_tokens)
    np.testing.assert_array_equal(memo.last_truncated, plain.last_truncated)
  assert inner.calls == [[("a", "x"), ("a", "yyyy"), ("b", "x")], [("c", "zz")]]
  assert memo.scored == 4
  assert memo.score([], []).shape == (0,) and len(inner.calls) == 2
