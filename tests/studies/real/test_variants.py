"""The variants study (arXiv 2404.14723): which arms a budget runs. (Its quick mode:
tests/studies/real/test_quick_modes.py.)"""

from prefjax.studies.real.variants import BUDGET, arms


def test_cut_grid_runs_every_method_once_and_dpo_across_starts_and_sizes():
  a = arms(BUDGET)
  assert a[0] == ("dpo", "instruct", "medium")
  assert {m for m, s, z in a if (s, z) == ("instruct", "medium")} == set(BUDGET["methods"])
  assert {s for m, s, z in a if m == "dpo"} == set(BUDGET["starts"])
  assert {z for m, s, z in a if m == "dpo"} == set(BUDGET["sizes"])
  assert len(a) == len(set(a)) == 10
  assert len(arms(dict(BUDGET, grid="full"))) == 54
