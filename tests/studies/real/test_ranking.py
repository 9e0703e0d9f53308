"""The ranking study (arXiv 2405.19534): held-out pairs from scored samples. (Its quick mode:
tests/studies/real/test_quick_modes.py.)"""

from prefjax.studies.real.ranking import heldout_pairs
from tests.studies.real.test_mdpo import _pool


def test_heldout_pairs_are_every_correct_wrong_pair_of_a_prompt():
  pairs = heldout_pairs(_pool())
  assert len(pairs) == 6
  assert {(p["chosen"], p["rejected"]) for p in pairs if p["id"].startswith("p2")} == {
      ("r20", "r22"), ("r21", "r22"), ("r23", "r22")}
