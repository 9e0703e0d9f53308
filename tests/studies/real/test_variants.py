"""The variants study (arXiv 2404.14723): which arms a budget runs, and its quick mode end
to end on SmolLM2."""
import pytest

from prefjax.studies.real.variants import BUDGET, arms
from tests.studies.real.quick import run_quick


def test_cut_grid_runs_every_method_once_and_dpo_across_starts_and_sizes():
  a = arms(BUDGET)
  assert a[0] == ("dpo", "instruct", "medium")
  assert {m for m, s, z in a if (s, z) == ("instruct", "medium")} == set(BUDGET["methods"])
  assert {s for m, s, z in a if m == "dpo"} == set(BUDGET["starts"])
  assert {z for m, s, z in a if m == "dpo"} == set(BUDGET["sizes"])
  assert len(a) == len(set(a)) == 10
  assert len(arms(dict(BUDGET, grid="full"))) == 54


@pytest.mark.slow
@pytest.mark.alone
def test_quick_mode_writes_gain_over_each_start(tmp_path):
  doc = run_quick(tmp_path, "variants", ("method", "start", "size", "seed", "accuracy",
                                         "start_accuracy", "gain", "win_rate", "kl",
                                         "length", "lr"))
  assert {(r["method"], r["start"]) for r in doc["rows"]} == {
      ("dpo", "instruct"), ("kto", "instruct"), ("dpo", "sft_task")}
