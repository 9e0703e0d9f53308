"""Chunked vocabulary log-probs equal the full-logits path (values and gradients)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prefjax.models import Transformer, make_config
from prefjax.models.logprobs import chunked_token_logprobs, forward_logps, token_logprobs


def _np_logprobs(h, w, y, softcap):
  """Plain-numpy reference: log softmax(softcap(h @ w))[y] in float64."""
  logits = h.astype(np.float64) @ w.astype(np.float64)
  if softcap is not None:
    logits = softcap * np.tanh(logits / softcap)
  m = logits.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
  return np.take_along_axis(logits, y[..., None], -1)[..., 0] - lse


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("chunk", [1, 7, 100])
def test_chunked_matches_numpy_and_plain_gradients(softcap, chunk):
  rng = np.random.default_rng(0)
  h = rng.standard_normal((3, 4, 8)).astype(np.float32)
  w = rng.standard_normal((8, 11)).astype(np.float32)
  y = rng.integers(0, 11, (3, 4))
  got = chunked_token_logprobs(h, w, y, chunk_size=chunk, softcap=softcap)
  np.testing.assert_allclose(got, _np_logprobs(h, w, y, softcap), rtol=1e-5, atol=1e-5)

  def plain(h, w):
    logits = h @ w
    if softcap is not None:
      logits = softcap * jnp.tanh(logits / softcap)
    return token_logprobs(logits, y)

  cot = rng.standard_normal((3, 4)).astype(np.float32)   # a generic cotangent
  f_plain = lambda h, w: (plain(h, w) * cot).sum()
  f_chunk = lambda h, w: (chunked_token_logprobs(h, w, y, chunk_size=chunk, softcap=softcap)
                          * cot).sum()
  for a, b in zip(jax.grad(f_plain, (0, 1))(h, w), jax.jit(jax.grad(f_chunk, (0, 1)))(h, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # A [V, D] table (tied embeddings) gives the same values and its gradient transposed.
  f_vd = lambda h, e: (chunked_token_logprobs(h, e, y, chunk_size=chunk, softcap=softcap,
                                              vocab_major=True) * cot).sum()
  g_h, g_e = jax.jit(jax.grad(f_vd, (0, 1)))(h, w.T)
  g_h_ref, g_w_ref = jax.grad(f_plain, (0, 1))(h, w)
  np.testing.assert_allclose(g_h, g_h_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g_e, g_w_ref.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    {}, pytest.param({"tie_embeddings": False}, marks=pytest.mark.slow),
    pytest.param({"final_softcap": 3.0}, marks=pytest.mark.slow)], ids=["tied", "untied", "softcap"])
def test_forward_logps_chunked_equals_full_logits(overrides):
  cfg = make_config(None, vocab_size=29, overrides=dict(
      dim=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, mlp_dim=24, max_len=16,
      **overrides))
  graphdef, state = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(1)
  b, t = 3, 10
  mask = (np.arange(t)[None] >= np.array([[2], [4], [1]])).astype(np.int32)
  batch = {"input_ids": rng.integers(1, 29, (b, t)), "target_ids": rng.integers(1, 29, (b, t)),
           "loss_mask": mask, "positions": np.tile(np.arange(t), (b, 1)),
           "segment_ids": np.ones((b, t), np.int32)}

  def f(params, chunk):
    logps, lengths, tok = forward_logps(nnx.merge(graphdef, params), batch, chunk_size=chunk)
    return (logps * jnp.arange(1.0, b + 1)).sum(), (logps, lengths, tok)

  vg = jax.jit(jax.value_and_grad(f, has_aux=True), static_argnums=1)
  (_, full), g_full = vg(params, None)
  (_, chunked), g_chunk = vg(params, 4)
  for a, c in zip(full, chunked):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
  for a, c in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_chunk)):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


def test_chunked_backward_never_holds_full_logits():
  """The compiled gradient's temporaries stay far below one [N, V] float32 logits array."""
  n, d, v, c = 512, 16, 4096, 64
  h = jnp.ones((1, n, d), jnp.float32)
  w = jnp.ones((d, v), jnp.float32)
  y = jnp.zeros((1, n), jnp.int32)

  def temp_bytes(fn):
    compiled = jax.jit(jax.grad(lambda h, w: fn(h, w).sum(), (0, 1))).lower(h, w).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  full = temp_bytes(lambda h, w: token_logprobs(h @ w, y))
  chunked = temp_bytes(lambda h, w: chunked_token_logprobs(h, w, y, chunk_size=c))
  assert full >= n * v * 4                     # the plain path holds the logits
  assert chunked < full / 4, (full, chunked)


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_masked_chunked_equals_plain_on_wanted_tokens(chunk):
  """mask_bt: the wanted tokens' values and the gradients equal the plain path's; the rest
  read 0 (rows with no, some and all tokens wanted)."""
  rng = np.random.default_rng(2)
  h = rng.standard_normal((3, 6, 8)).astype(np.float32)
  w = rng.standard_normal((11, 8)).astype(np.float32)           # vocab-major (tied) table
  y = rng.integers(0, 11, (3, 6))
  mask = np.array([[0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]], np.float32)
  got = chunked_token_logprobs(h, w, y, chunk_size=chunk, vocab_major=True, mask_bt=mask)
  ref = _np_logprobs(h, w.T, y, None) * mask
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  cot = rng.standard_normal((3, 6)).astype(np.float32)
  f_plain = lambda h, w: (token_logprobs(h @ w.T, y) * mask * cot).sum()
  f_mask = lambda h, w: (chunked_token_logprobs(h, w, y, chunk_size=chunk, vocab_major=True,
                                                mask_bt=mask) * cot).sum()
  for a, b in zip(jax.grad(f_plain, (0, 1))(h, w), jax.jit(jax.grad(f_mask, (0, 1)))(h, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_masked_chunked_skips_chunks_without_wanted_tokens():
  """A chunk of unwanted tokens is never computed, in either pass: NaN hidden states there
  leave the values and gradients finite (computing them would put NaN into dW)."""
  c = 4
  rng = np.random.default_rng(3)
  h = rng.standard_normal((2, 12, 8)).astype(np.float32)
  w = rng.standard_normal((8, 11)).astype(np.float32)
  y = rng.integers(0, 11, (2, 12))
  mask = np.zeros((2, 12), np.float32)
  mask[0, [1, 5, 6, 9]] = 1                        # 4 wanted tokens: one full chunk per row
  mask[1, 4:8] = 1
  h[mask == 0] = np.nan
  f = lambda h, w: chunked_token_logprobs(h, w, y, chunk_size=c, mask_bt=mask).sum()
  val, (g_h, g_w) = jax.jit(jax.value_and_grad(f, (0, 1)))(h, w)
  assert np.isfinite(val) and np.isfinite(g_w).all() and np.isfinite(g_h[mask == 1]).all()
  h0 = np.where(mask[..., None] == 1, h, 0.0)
  np.testing.assert_allclose(val, (_np_logprobs(h0, w, y, None) * mask).sum(), rtol=1e-5)
