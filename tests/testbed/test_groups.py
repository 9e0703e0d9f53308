"""Group (multi-sample) preferences: scores, alpha and label frequencies, k = 1 view."""
import math
from collections import Counter

import numpy as np
import pytest

from prefjax.testbed import world
from prefjax.testbed.tasks import get_task


def _tv_to_uniform(options, group):
  """Independent transcription: TV(empirical, uniform over options), invalid mass counted."""
  n = len(group)
  c = Counter(group)
  p = {y: c[y] / n for y in c}
  support = set(options) | set(c)
  q = {y: (1 / len(options) if y in options else 0.0) for y in support}
  return 0.5 * sum(abs(p.get(y, 0.0) - q[y]) for y in support)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_group_label_frequencies_match_alpha(noise):
  """P(the higher-scoring group is chosen) summed from alpha equals the observed count."""
  cfg = world.WorldConfig(tasks=("sort", "add"), label_noise=noise, bt_temperature=0.2,
                          seed=5, group_size=3)
  groups = [g for g in world.group_preferences(cfg, 3000)
            if g["score_chosen"] != g["score_rejected"]]
  higher = np.array([g["score_chosen"] > g["score_rejected"] for g in groups])
  q = np.array([g["alpha"] if h else 1 - g["alpha"] for g, h in zip(groups, higher)])
  expected, sd = q.sum(), math.sqrt((q * (1 - q)).sum())
  assert abs(higher.sum() - expected) < 4 * sd, (higher.sum(), expected, sd)
  if noise == 0.2:   # flips after the BT draw: at least eps of the labels go the wrong way
    assert (1 - higher).mean() > 0.15


@pytest.mark.parametrize("tasks,k", [(("sort",), 4), (("add",), 2), (("pick",), 4),
                                     (("pick",), 2)])
def test_group_scores_and_alpha_recomputed_independently(tasks, k):
  cfg = world.WorldConfig(tasks=tasks, seed=2, bt_temperature=0.1, label_noise=0.1)
  for g in world.group_preferences(cfg, 200, k=k):
    assert len(g["chosen"]) == len(g["rejected"]) == k
    task = get_task(g["task"])
    for side in ("chosen", "rejected"):
      if task.population:
        want = -_tv_to_uniform(task.options(g["prompt"]), g[side])
      else:
        want = float(np.mean([task.reward(g["prompt"], y) for y in g[side]]))
      assert g[f"score_{side}"] == pytest.approx(want)
    s = (g["score_chosen"] - g["score_rejected"]) / 0.1
    p = 1 / (1 + math.exp(-s))
    assert g["alpha"] == pytest.approx(0.9 * p + 0.1 * (1 - p))


def test_pick_groups_one_biased_one_balanced():
  """Noise-free, sharp BT: the chosen pick group is (almost always) the more balanced one."""
  cfg = world.WorldConfig(tasks=("pick",), seed=1, bt_temperature=0.01)
  gs = world.group_preferences(cfg, 500, k=4)
  better = np.mean([g["score_chosen"] >= g["score_rejected"] for g in gs])
  assert better > 0.97
  # The biased groups over-represent the first offered letter.
  first = [np.mean([y == g["prompt"][len("pick:")] for y in g["rejected"]]) for g in gs]
  assert np.mean(first) > 0.5


def test_group_size_default_view_and_errors():
  cfg = world.WorldConfig(tasks=("sort",), group_size=3)
  gs = world.group_preferences(cfg, 20)
  assert all(len(g["chosen"]) == 3 for g in gs)
  assert gs == world.group_preferences(cfg, 20)          # deterministic
  pairs = world.groups_as_pairs(gs)
  assert [p["chosen"] for p in pairs] == [g["chosen"][0] for g in gs]
  assert all(isinstance(p["rejected"], str) for p in pairs)
  with pytest.raises(ValueError, match="group size"):
    world.group_preferences(cfg, 5, k=0)


def test_graded_reward():
  from prefjax.testbed.graded import graded_reward, graded_win_rate, similarity
  assert similarity("", "") == 1.0 and similarity("abc", "") == 0.0
  assert similarity("1,3,2", "1,2,3") == pytest.approx(1 - 2 / 5)
  assert graded_reward("sort", "sort:3,1,2", "1,2,3") == 1.0
  assert graded_reward("add", "add:12+5", "17") == 1.0
  assert graded_reward("add", "add:12+5", "1,7") == pytest.approx(1 - 1 / 3)  # no r* credit
  assert get_task("add").reward("add:12+5", "1,7") == 0.0
  assert graded_reward("pick", "pick:abc", "c") == 1.0
  assert graded_reward("pick", "pick:abc", "zc") == pytest.approx(0.5)
  wr, gp, gr = graded_win_rate(["add"] * 2, ["add:1+1"] * 2, ["2", "9"], ["2", "29"])
  assert wr == pytest.approx(0.25) and gp == pytest.approx(0.5) and gr == pytest.approx(0.75)
