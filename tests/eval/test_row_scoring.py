"""Prefix-shared, packed scoring equals the plain path and a per-sequence forward pass.

The independent reference runs the model on each sequence alone (no padding, no packing,
no buckets, full [1, T, V] logits) and takes log-softmax in numpy; prompts are cut from the
left (BOS kept) to fit ``max_len`` as ``collate.pack`` documents.
"""
import jax
import numpy as np
import pytest
from flax import nnx

from prefjax.eval import pair_scoring, row_scoring
from prefjax.testbed import tokenizer as tb_tokenizer
from prefjax.train import config as config_lib
from prefjax.train.model_source import build_model

MAX_LEN = 48


def _model(**over):
  c = config_lib.base_config()
  c.model.overrides.update(dict(n_layers=2, dim=32, mlp_dim=64, n_heads=2, n_kv_heads=1,
                                head_dim=16, **over))
  tok = tb_tokenizer.TestbedTokenizer()
  _, graphdef, params = build_model(c, tok)
  return graphdef, params, tok


@pytest.fixture(scope="module")
def model():
  return _model()


def _pairs(tok, n=19, seed=0):
  """Varied lengths; the last pairs need the prompt cut at MAX_LEN, differently per side."""
  rng = np.random.default_rng(seed)
  rand = lambda lo, hi: "".join(rng.choice(list("abcdefghij"), rng.integers(lo, hi)))
  prompts = [tok.encode_prompt(rand(1, 30)) for _ in range(n)]
  chosen = [tok.encode_completion(rand(1, 20)) for _ in range(n)]
  rejected = [tok.encode_completion(rand(1, 20)) for _ in range(n)]
  prompts += [tok.encode_prompt("abcdefghij" * 6)] * 3
  chosen += [tok.encode_completion("ab"), tok.encode_completion("abcdefghij" * 2),
             tok.encode_completion("a" * (MAX_LEN - 1))]
  rejected += [tok.encode_completion("abcdefghij" * 3), tok.encode_completion("j" * 20),
               tok.encode_completion("b")]
  return prompts, chosen, rejected


def _reference(graphdef, params, prompts, completions, max_len):
  """Summed log pi(completion | prompt), each sequence alone in a [1, max_len] row.

  Full [T, V] logits and a float64 numpy log-softmax; no packing, buckets or windows.
  """
  model = nnx.merge(graphdef, params)
  fwd = jax.jit(lambda ids, pos, seg: model(ids, pos, seg)[0])
  sums, lengths = [], []
  for prompt, completion in zip(prompts, completions):
    room = max_len + 1 - len(completion)
    if len(prompt) > room:
      prompt = prompt[:1] + (prompt[len(prompt) - room + 1:] if room > 1 else [])
    full = np.asarray(list(prompt) + list(completion), np.int32)
    t = len(full) - 1
    ids, seg = np.zeros((1, max_len), np.int32), np.zeros((1, max_len), np.int32)
    ids[0, :t], seg[0, :t] = full[:-1], 1
    pos = np.arange(max_len, dtype=np.int32)[None]
    logits = np.asarray(fwd(ids, pos, seg)[0, :t], np.float64)                   # [t, V]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    tok = logp[np.arange(t), full[1:]][len(prompt) - 1:]
    sums.append(tok.sum())
    lengths.append(len(completion))
  return np.array(sums), np.array(lengths)


def _check(graphdef, params, tok, plain=False, **kw):
  p, c, r = _pairs(tok)
  got_c, got_r = pair_scoring.score_pairs(graphdef, params, p, c, r, max_len=MAX_LEN,
                                          batch_size=4, batch_tokens=128,
                                          smallest_bucket=16, chunk_size=24, **kw)
  if plain:
    plain = pair_scoring.score_pairs(graphdef, params, p, c, r, max_len=MAX_LEN,
                                     batch_size=8, buckets=[MAX_LEN], layout="plain")
  for k, (got, comps) in enumerate(((got_c, c), (got_r, r))):
    want_sums, want_lengths = _reference(graphdef, params, p, comps, MAX_LEN)
    np.testing.assert_allclose(got.sums, want_sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.lengths, want_lengths)
    if plain:
      np.testing.assert_allclose(got.sums, plain[k].sums, rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(got.means, plain[k].means, rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(got.truncated, plain[k].truncated)
  assert got_c.truncated[-3:].all() and got_r.truncated[-3:].all()
  assert not got_c.truncated[:-3].any()
  return got_c


def test_prefix_equals_plain_and_reference(model):
  got = _check(*model, plain=True)
  assert got.num_shapes >= 2


def test_long_rows_share_truncated_prompts(model):
  """row_len 2 * max_len: a pair cut the same way on both sides is shared too."""
  _check(*model, row_len=2 * MAX_LEN)


def test_short_rows_keep_long_units_whole(model):
  """row_len < max_len: short units share rows of row_len, longer ones (shared pairs up to
  max_len, cut sequences) get rows of their own; the sums still equal the reference."""
  got = _check(*model, row_len=MAX_LEN // 2)
  assert got.num_shapes >= 2


def test_pack_rows_gives_long_units_their_own_row():
  unit = lambda n: {k: np.arange(1, n + 1, dtype=np.int32) for k in
                    ("input_ids", "target_ids", "positions", "segment_ids", "branch_ids",
                     "slot_ids", "loss_mask")}
  rows = row_scoring.pack_rows([unit(5), unit(20), unit(7), unit(3)], row_len=10,
                               buckets=[8, 16, 24])
  fills = sorted(int((r["segment_ids"] != 0).sum()) for rs in rows.values() for r in rs)
  assert fills == [5, 10, 20] and sorted(rows) == [8, 16, 24]
  with pytest.raises(ValueError, match="exceeds the longest bucket"):
    row_scoring.pack_rows([unit(30)], row_len=10, buckets=[8, 16, 24])


def test_untied_softcapped_model():
  _check(*_model(tie_embeddings=False, final_softcap=5.0))


def test_sliding_window_model_shares_only_inside_the_window():
  _check(*_model(sliding_window=12))


def test_units_share_the_prompt_unless_cuts_differ(model):
  tok = model[2]
  p, c, r = _pairs(tok)
  n = len(p)
  units, cut = row_scoring.make_units(p, [[i, n + i] for i in range(n)], c + r,
                                      max_len=MAX_LEN)
  # an untruncated pair that fits max_len is one unit; a truncated one needs > max_len
  fits = [not cut[i] and len(p[i]) - 1 + len(c[i]) + len(r[i]) <= MAX_LEN for i in range(n)]
  shared = [u for u in units if len(set(u["slot_ids"]) - {-1}) == 2]
  assert len(shared) == sum(fits) >= 5 and len(units) == 2 * n - sum(fits)
  for u in shared:   # prompt once: unit size = p - 1 + |c| + |r|
    i = min(set(u["slot_ids"]) - {-1})
    assert len(u["input_ids"]) == len(p[i]) - 1 + len(c[i]) + len(r[i])
  rows = row_scoring.pack_rows(units, row_len=MAX_LEN, buckets=[16, 32, MAX_LEN])
  n_rows = sum(len(v) for v in rows.values())
  assert n_rows < len(units)                        # short units share rows
  for length, rs in rows.items():
    for row in rs:
      assert row["input_ids"].shape == (length,)


def test_score_sequences_packed_equals_plain(model):
  graphdef, params, tok = model
  p, c, _ = _pairs(tok)
  got = pair_scoring.score_sequences(graphdef, params, p, c, max_len=MAX_LEN, batch_size=3)
  want = pair_scoring.score_sequences(graphdef, params, p, c, max_len=MAX_LEN, batch_size=3,
                                      layout="plain")
  np.testing.assert_allclose(got.sums, want.sums, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got.truncated, want.truncated)


def test_bad_layout_and_groups(model):
  graphdef, params, tok = model
  p, c, _ = _pairs(tok, n=3)
  with pytest.raises(ValueError, match="layout"):
    pair_scoring.score_sequences(graphdef, params, p, c, max_len=MAX_LEN, layout="rows")
  with pytest.raises(ValueError, match="mixes prompts"):
    pair_scoring.score_sequences(graphdef, params, p[:2], c[:2], max_len=MAX_LEN,
                                 layout="prefix", groups=[[0, 1]])
