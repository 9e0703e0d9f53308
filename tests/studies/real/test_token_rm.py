"""The token_rm study (arXiv 2406.02756): the verifier's minimal edits. (Its quick mode:
tests/studies/real/test_quick_modes.py.)"""
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

from prefjax.models import make_config
from prefjax.rewards.model import RewardModel
from prefjax.rewards.token_model import TokenRewardModel, encode_edit_pair
from prefjax.studies.real.common import Sizes
from prefjax.studies.real.frame import minimal_edit
from prefjax.studies.real.token_rm import (flaw_metrics, pair_accuracy, row_len,
                                           sequence_scores, token_scores)
from prefjax.testbed.tokenizer import TestbedTokenizer


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


@pytest.mark.parametrize("prompt_len,resp_len,want,shared_want",
                         [(40, 5, 64, 64), (60, 4, 96, 96), (60, 34, 96, 128),
                          (300, 5, 192, 320)])
def test_row_len_fits_the_longest_edit_row(prompt_len, resp_len, want, shared_want):
  env = SimpleNamespace(tokenizer=_CharTokenizer(), sizes=Sizes(max_len=192))
  examples = [{"prompt": "p" * 10, "original": "a", "edited": "b"},
              {"prompt": "p" * prompt_len, "original": "a" * resp_len, "edited": "b"}]
  # plain: the prompt + the longer response + its end token, rounded up to 32, <= max_len
  assert row_len(env, examples) == want
  # prefix-shared: the prompt + both responses with their end tokens, not capped
  assert row_len(env, examples, shared=True) == shared_want
  assert row_len(env, []) == row_len(env, [], shared=True) == 192


def test_pair_accuracy_counts_edits_scored_above_their_originals():
  # 2 of each 4 edits scored above their original, 1 below and 1 tied (not a win); the
  # padding rows (example_mask 0) do not count.
  chosen = np.array([2.0, 3.0, 1.0, 2.0] * 5 + [9.0] * 4)
  rejected = np.array([1.0, 1.0, 2.0, 2.0] * 5 + [0.0] * 4)
  mask = np.array([1.0] * 20 + [0.0] * 4, np.float32)
  s = {"chosen": chosen, "rejected": rejected, "example_mask": mask}
  assert pair_accuracy(s) == 0.5
  assert pair_accuracy(dict(s, chosen=-chosen, rejected=-rejected)) == 0.25
  assert np.isnan(pair_accuracy({}))


def test_flaw_metrics_count_flagged_tokens_inside_the_mask():
  # 2 examples x 4 tokens; the last token of each is padding (mask 0), the second example is
  # a padding row (example_mask 0). Flagged (r < -0.5): tokens 0 and 1 of example 0; the
  # edit diff marks tokens 1 and 2: precision 1/2, recall 1/2.
  scores = {"rejected_token_rewards": np.array([[-1.0, -0.9, 0.0, -5.0], [-1.0] * 4]),
            "rejected_flaw_labels": np.array([[0, 1, 1, 1], [1] * 4], np.float32),
            "rejected_loss_mask": np.array([[1, 1, 1, 0], [1] * 4], np.float32),
            "example_mask": np.array([1.0, 0.0], np.float32)}
  out = flaw_metrics(scores, threshold=0.5)
  assert out["precision"] == pytest.approx(0.5)
  assert out["recall"] == pytest.approx(0.5)


_EDITS = [{"id": str(i), "prompt": p, "original": o, "edited": e, "flawed_mask": []}
          for i, (p, o, e) in enumerate([("abc", "dd e", "dd f"), ("ab", "xyz", "xz"),
                                         ("cabba", "q", "qrs"), ("abc", "e", "ee")] * 5)]
_ENV = SimpleNamespace(tokenizer=TestbedTokenizer(), sizes=Sizes(max_len=24))


def _tiny(cls):
  cfg = make_config("testbed-tiny", vocab_size=TestbedTokenizer().vocab_size,
                    overrides=dict(n_layers=2, dim=32, head_dim=8, mlp_dim=64))
  m = cls(cfg, nnx.Rngs(0))
  for i, name in enumerate(("w", "b", "head")):
    if hasattr(m, name):
      v = getattr(m, name)
      v[...] = jax.random.normal(jax.random.key(i), v[...].shape)
  return nnx.split(m)


def _plain_rows(enc):
  """_EDITS as one batch of plain rows (each side its own row), the reference layout."""
  rows = [enc(e) for e in _EDITS]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_token_scores_are_the_plain_rows_token_rewards_in_one_pass():
  # 20 edits: two eval batches of 16, the second with 12 padding rows
  graphdef, params = _tiny(TokenRewardModel)
  enc = encode_edit_pair(_ENV.tokenizer, 24)
  s = token_scores(_ENV, graphdef, params, _EDITS, enc)
  assert s["chosen"].shape == s["example_mask"].shape == (32,)
  assert s["example_mask"].sum() == 20
  m, batch = nnx.merge(graphdef, params), _plain_rows(enc)
  for side in ("chosen", "rejected"):
    want = np.asarray(m.token_rewards(batch, prefix=f"{side}_")).sum(-1)
    np.testing.assert_allclose(s[side][:20], want, rtol=1e-4, atol=1e-4)
  assert np.abs(s["rejected_token_rewards"]).sum() > 0.1
  assert np.isnan(pair_accuracy(token_scores(_ENV, graphdef, params, [], enc)))


def test_sequence_scores_are_each_answers_own_row_reward():
  graphdef, params = _tiny(RewardModel)
  s = sequence_scores(_ENV, graphdef, params, _EDITS, 24)
  m, batch = nnx.merge(graphdef, params), _plain_rows(encode_edit_pair(_ENV.tokenizer, 24))
  for side in ("chosen", "rejected"):
    np.testing.assert_allclose(s[side], np.asarray(m.rewards(batch, prefix=f"{side}_")),
                               rtol=1e-4, atol=1e-4)
  assert np.std(s["chosen"]) > 1e-3
