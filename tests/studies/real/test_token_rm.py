"""The token_rm study (arXiv 2406.02756): the verifier's minimal edits. (Its quick mode:
tests/studies/real/test_quick_modes.py.)"""
from types import SimpleNamespace

import numpy as np
import pytest

from prefjax.studies.real.common import Sizes
from prefjax.studies.real.frame import minimal_edit
from prefjax.studies.real.token_rm import pair_accuracy, row_len


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


def _length_encoder(ex):
  """Rows whose only content is each side's length (a stand-in for real token rows)."""
  return {"chosen_len": np.float32(len(ex["edited"])),
          "rejected_len": np.float32(len(ex["original"])), "example_mask": np.float32(1.0)}


def test_pair_accuracy_counts_edits_scored_above_their_originals():
  # a "reward model" that prefers longer answers ranks 2 of each 4 edits above their
  # original, 1 below, and ties 1 (not a win); 20 edits span two eval batches of 16, the
  # second padded (example_mask 0 rows do not count).
  examples = [{"id": str(i), "original": "a" * o, "edited": "b" * e}
              for i, (o, e) in enumerate([(1, 2), (1, 3), (2, 1), (2, 2)] * 5)]
  longer = lambda graphdef, params, b, prefix: b[prefix + "len"]
  assert pair_accuracy(longer, None, None, examples, _length_encoder) == pytest.approx(0.5)
  shorter = lambda graphdef, params, b, prefix: -b[prefix + "len"]
  assert pair_accuracy(shorter, None, None, examples, _length_encoder) == pytest.approx(0.25)
  assert np.isnan(pair_accuracy(longer, None, None, [], _length_encoder))
