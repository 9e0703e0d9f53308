"""The mdpo study (arXiv 2410.12138): the pieces it builds its examples from. (Its quick mode:
tests/studies/real/test_quick_modes.py.)"""
import numpy as np

from prefjax.data.prompts import PromptItem
from prefjax.studies.real.common import Pool, noisy_scores
from prefjax.studies.real.frame import examples_from_pool


def _pool():
  items = [PromptItem(id=f"p{i}", prompt=f"q{i}") for i in range(3)]
  responses = [[f"r{i}{k}" for k in range(4)] for i in range(3)]
  correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1]], np.float64)
  return Pool(items, responses, correct, np.full((3, 4), 5.0))


def test_noisy_scores_flips_whole_prompts_with_the_given_rate():
  s = np.tile(np.array([[1.0, 0.0]]), (4000, 1))
  out = noisy_scores(s, 0.3, seed=0)
  flipped = (out[:, 0] < 0)
  assert abs(flipped.mean() - 0.3) < 0.03
  np.testing.assert_array_equal(out[~flipped], s[~flipped])
  np.testing.assert_array_equal(out[flipped], -s[flipped])
  np.testing.assert_array_equal(noisy_scores(s, 0.0, seed=0), s)
  np.testing.assert_array_equal(out, noisy_scores(s, 0.3, seed=0))


def test_examples_from_pool_pairs_groups_and_singles():
  pool = _pool()
  pairs = examples_from_pool("pairwise", pool)
  assert [(e["chosen"], e["rejected"]) for e in pairs] == [("r00", "r03"), ("r20", "r22")]
  groups = examples_from_pool("multi", pool)
  assert [e["chosen"] for e in groups] == [["r00", "r01"], ["r20", "r21"]]
  assert groups[1]["rejected"] == ["r22", "r23"]
  # a flipped preference reverses the pair
  flipped = examples_from_pool("pairwise", pool, -pool.correct)
  assert (flipped[0]["chosen"], flipped[0]["rejected"]) == ("r01", "r00")
  singles = examples_from_pool("unpaired", pool)
  assert sum(e["label"] for e in singles) == 4 and len(singles) == 8
