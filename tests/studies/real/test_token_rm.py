"""The token_rm study (arXiv 2406.02756): the verifier's minimal edits. (Its quick mode:
tests/studies/real/test_quick_modes.py.)"""
from types import SimpleNamespace

import pytest

from prefjax.studies.real.common import Sizes
from prefjax.studies.real.token_rm import minimal_edit, row_len


@pytest.mark.parametrize("response,want", [
    ("Answer: 6", "Answer: 7"),
    ("3 + 4 is 7?\nAnswer:  6 ", "3 + 4 is 7?\nAnswer:  7 "),
    ("The sum is 6.", "The sum is 6.\nAnswer: 7"),
])
def test_minimal_edit_replaces_only_the_answer(response, want):
  assert minimal_edit(response, "7") == want


class _CharTokenizer:
  def encode_prompt(self, prompt):
    return list(prompt)

  def encode_completion(self, text):
    return list(text) + ["</s>"]


@pytest.mark.parametrize("prompt_len,resp_len,want", [(40, 5, 64), (60, 4, 96), (300, 5, 192)])
def test_row_len_fits_the_longest_edit_row_up_to_max_len(prompt_len, resp_len, want):
  env = SimpleNamespace(tokenizer=_CharTokenizer(), sizes=Sizes(max_len=192))
  examples = [{"prompt": "p" * 10, "original": "a", "edited": "b"},
              {"prompt": "p" * prompt_len, "original": "a" * resp_len, "edited": "b"}]
  # longest row: the prompt + the longer response + its end token, rounded up to 32
  assert row_len(env, examples) == want
  assert row_len(env, []) == 192
