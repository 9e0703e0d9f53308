"""prefjax.eval.real_ranking_study (scripts/study_real_ranking.py) on a tiny real-format SFT ->
DPO run: its held-out rows agree with the run's own held-out monitor (computed during training
by another path), and its flip counts add up."""
import os
import sys

import pytest

pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")
pytest.importorskip("matplotlib")

from prefjax.eval.real_ranking_study import study
from prefjax.train.run import run

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "train"))
import real_fixtures as fx  # noqa: E402
from test_run import _config  # noqa: E402

pytestmark = pytest.mark.slow


def test_study_rows_match_the_runs_heldout_monitor(tmp_path):
  files = {"model": fx.tiny_hf_model(str(tmp_path / "model")),
           "pairs": fx.write_pairs(tmp_path / "pairs.jsonl", n=64)}
  c = _config(files)
  c.checkpoint.every = 2
  c.data.n_eval = 12
  c.heldout.enabled = False    # the eval stage still scores the held-out pairs (its own monitor)
  w = tmp_path / "w"
  summary = run(c, str(w))
  out = tmp_path / "study"
  res = study(str(w), str(out), progress=False)
  held = res["held-out"]
  assert held["num_pairs"] == summary["eval/heldout/n_pairs"]
  before = held["rows"]["before DPO (SFT = reference)"]
  after = held["rows"]["after DPO"]
  assert before["ranking/accuracy"] == pytest.approx(summary["eval/ranking/heldout_ref_accuracy"])
  assert after["ranking/accuracy"] == pytest.approx(summary["eval/ranking/heldout_accuracy"])
  assert after["ranking/accuracy_normalized"] == pytest.approx(
      summary["eval/ranking/heldout_accuracy_normalized"])
  f = res["flips"]
  assert f["num_pairs"] == res["training"]["num_pairs"] > 0
  assert f["num_ref_wrong_total"] + f["num_ref_right_total"] <= f["num_pairs"]
  assert sum(f["num_ref_wrong"]) == f["num_ref_wrong_total"]
  assert 0.0 <= f["overall_wrong_to_right"] <= 1.0
  for name in ("table1.md", "flips.md", "flips.png"):
    assert (out / name).stat().st_size > 0

  # The DPO implicit reward of the same real workdir (scripts/eval_rewards.py's scorer) is
  # beta * (log pi - log pi_ref) as pair scoring computes it for the study.
  import numpy as np
  from prefjax.eval import pair_scoring
  from prefjax.rewards.saved_scorers import load_scorer
  from prefjax.train.finished_run import load_run
  scorer, info = load_scorer(str(w))
  assert info["kind"] == "implicit"
  m = load_run(str(w))
  prompts, responses = ["the answer is", "please help"], ["yes good", "no that is bad"]
  ids_p = [m.tokenizer.encode_prompt(p) for p in prompts]
  ids_r = [m.tokenizer.encode_completion(r) for r in responses]
  pol = pair_scoring.score_sequences(m.graphdef, m.policy, ids_p, ids_r, max_len=48)
  ref = pair_scoring.score_sequences(m.graphdef, m.reference, ids_p, ids_r, max_len=48)
  np.testing.assert_allclose(scorer.score(prompts, responses),
                             info["beta"] * (pol.sums - ref.sums), atol=1e-5)
