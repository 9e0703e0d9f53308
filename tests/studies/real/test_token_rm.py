"""The token_rm study (arXiv 2406.02756): the verifier's minimal edits, and its quick mode
end to end on SmolLM2."""
import pytest

from prefjax.studies.real.token_rm import minimal_edit
from tests.studies.real.quick import run_quick


@pytest.mark.parametrize("response,want", [
    ("Answer: 6", "Answer: 7"),
    ("3 + 4 is 7?\nAnswer:  6 ", "3 + 4 is 7?\nAnswer:  7 "),
    ("The sum is 6.", "The sum is 6.\nAnswer: 7"),
])
def test_minimal_edit_replaces_only_the_answer(response, want):
  assert minimal_edit(response, "7") == want


@pytest.mark.slow
@pytest.mark.alone
def test_quick_mode_writes_accuracy_of_each_rl_method_and_flag_precision(tmp_path):
  doc = run_quick(tmp_path, "token_rm", ("method", "seed", "accuracy", "win_rate", "kl",
                                         "precision", "recall", "edits"))
  assert {r["method"] for r in doc["rows"]} == {"fine_grained_ppo", "sequence_rm_ppo",
                                                "grpo_verifier"}
