"""The ranking study (arXiv 2405.19534): held-out pairs from scored samples, and its quick
mode end to end on SmolLM2."""
import pytest

from prefjax.studies.real.ranking import heldout_pairs
from tests.studies.real.quick import run_quick
from tests.studies.real.test_mdpo import _pool


def test_heldout_pairs_are_every_correct_wrong_pair_of_a_prompt():
  pairs = heldout_pairs(_pool())
  assert len(pairs) == 6
  assert {(p["chosen"], p["rejected"]) for p in pairs if p["id"].startswith("p2")} == {
      ("r20", "r22"), ("r21", "r22"), ("r23", "r22")}


@pytest.mark.slow
@pytest.mark.alone
def test_quick_mode_writes_ranking_accuracy_and_win_rate_by_checkpoint(tmp_path):
  doc = run_quick(tmp_path, "ranking", ("checkpoint", "step", "seed", "R_heldout",
                                        "R_norm_heldout", "R_star_heldout", "R_train",
                                        "accuracy", "win_rate", "kl"))
  steps = [r["step"] for r in doc["rows"]]
  assert steps == sorted(steps) and steps[0] == 0 and len(steps) == 3
  assert doc["rows"][0]["kl"] == 0.0 and doc["rows"][0]["win_rate"] == 0.5
  assert "flips_wrong_to_right_by_quartile" in doc["rows"][-1]
