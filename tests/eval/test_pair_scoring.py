"""pair_scoring: bucketed, token-budgeted, head-windowed scoring equals one unbucketed pass.

These test the plain layout; tests/eval/test_row_scoring.py tests the prefix-shared one.

The reference is ``prefjax.eval.completion_scoring.score_completions`` (full [B, T, V] logits, one
shape, no buckets, no window), on a tiny random testbed model.
"""
import numpy as np
import pytest

from prefjax.eval import pair_scoring
from prefjax.eval.completion_scoring import score_completions
from prefjax.testbed import tokenizer as tb_tokenizer
from prefjax.train import config as config_lib
from prefjax.train.model_source import build_model


@pytest.fixture(scope="module")
def model():
  c = config_lib.base_config()
  c.model.overrides.update(dict(n_layers=1, dim=32, mlp_dim=64, n_heads=2, n_kv_heads=1,
                                head_dim=16))
  tok = tb_tokenizer.TestbedTokenizer()
  _, graphdef, params = build_model(c, tok)
  return graphdef, params, tok


def _data(tok, n=23, seed=0):
  rng = np.random.default_rng(seed)
  letters = "abcdefghij"
  rand = lambda lo, hi: "".join(rng.choice(list(letters), rng.integers(lo, hi)))
  prompts = [tok.encode_prompt(rand(1, 40)) for _ in range(n)]
  comps = [tok.encode_completion(rand(1, 20)) for _ in range(n)]
  return prompts, comps


@pytest.mark.parametrize("window_head", [True, False])
def test_bucketed_scores_equal_unbucketed(model, window_head):
  graphdef, params, tok = model
  prompts, comps = _data(tok)
  want_lp, want_len = score_completions(graphdef, params, prompts, comps, max_len=64,
                                        batch_size=8)
  got = pair_scoring.score_sequences(graphdef, params, prompts, comps, max_len=64,
                                     batch_size=8, batch_tokens=128, smallest_bucket=16,
                                     window_head=window_head, layout="plain")
  np.testing.assert_allclose(got.sums, want_lp, rtol=1e-5, atol=1e-4)
  np.testing.assert_array_equal(got.lengths, want_len)
  assert got.num_shapes >= 2 and not got.truncated.any()


def test_window_used_for_plain_transformer(model):
  assert pair_scoring._window_ok(model[0])


def test_explicit_buckets_and_window_at_row_end(model):
  """A completion that ends at the last slot: the window is shifted left, sums unchanged."""
  graphdef, params, tok = model
  prompts = [tok.encode_prompt("abcdefghij" * 3), tok.encode_prompt("ab")]
  comps = [tok.encode_completion("abc"), tok.encode_completion("abcdefghijabcdefghij")]
  want_lp, _ = score_completions(graphdef, params, prompts, comps, max_len=48, batch_size=2)
  got = pair_scoring.score_sequences(graphdef, params, prompts, comps, max_len=48,
                                     batch_size=2, buckets=[33], layout="plain")
  np.testing.assert_allclose(got.sums, want_lp, rtol=1e-5, atol=1e-4)


class _ChatTok:
  """Records what encode_pairs hands the tokenizer."""
  chat_template = "x"

  def __init__(self):
    self.seen = []

  def encode_prompt(self, p):
    self.seen.append(p)
    return [1, 2]

  def encode_completion(self, text):
    self.seen.append(text)
    return [ord(ch) for ch in text] + [0]


def test_encode_pairs_chat_template_strips_completions():
  tok = _ChatTok()
  msgs = [{"role": "user", "content": "hi"}]
  pairs = [dict(prompt="\n\nHuman: hi\n\nAssistant:", chat=msgs, chosen=" Yes.\n",
                rejected=" No."),
           dict(prompt="plain", chat=None, chosen="a", rejected="   ")]
  p, c, r, kept, dropped = pair_scoring.encode_pairs(tok, pairs, max_len=64)
  assert tok.seen[:3] == [msgs, "Yes.", "No."]
  assert tok.seen[3:] == ["plain", "a", ""]      # a string prompt; whitespace-only -> ""
  assert kept == [0, 1] and not dropped
  assert c[0] == [ord(ch) for ch in "Yes."] + [0] and r[1] == [0]


def test_encode_pairs_without_template_keeps_text():
  tok = tb_tokenizer.TestbedTokenizer()
  pairs = [dict(prompt="ab", chat=None, chosen="ba", rejected="ab")]
  p, c, r, kept, _ = pair_scoring.encode_pairs(tok, pairs, max_len=64)
  assert c[0] == tok.encode_completion("ba") and p[0] == tok.encode_prompt("ab")


def test_window_head_untied_softcapped():
  """The window head reproduces the untied, soft-capped output head too."""
  c = config_lib.base_config()
  c.model.overrides.update(dict(n_layers=1, dim=16, mlp_dim=32, n_heads=2, n_kv_heads=1,
                                head_dim=8, tie_embeddings=False, final_softcap=5.0))
  tok = tb_tokenizer.TestbedTokenizer()
  _, graphdef, params = build_model(c, tok)
  prompts, comps = _data(tok, n=6, seed=1)
  want_lp, _ = score_completions(graphdef, params, prompts, comps, max_len=64, batch_size=6)
  got = pair_scoring.score_sequences(graphdef, params, prompts, comps, max_len=64,
                                     batch_size=6, buckets=[64], layout="plain")
  np.testing.assert_allclose(got.sums, want_lp, rtol=1e-5, atol=1e-4)
