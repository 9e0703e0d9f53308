"""Attention masks (segments, padding, prefix-shared branches) and the kernel glue."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax.models.attention import attend, causal_segment_mask, select_kernel


def _np_mask(seg, branch):
  """Loop transcription of the masking rule in the module docstring."""
  b, t = seg.shape
  m = np.zeros((b, 1, t, t), bool)
  for i in range(b):
    for q in range(t):
      for k in range(t):
        m[i, 0, q, k] = (k <= q and seg[i, k] == seg[i, q] and seg[i, k] != 0
                         and (branch[i, k] == 0 or branch[i, k] == branch[i, q]))
  return m


# Two rows: [prompt(3) | r1(2) | r2(3) | pad], [unit A: prompt 2, r1 2 | unit B: prompt 1, r1 1, r2 2 | pad]
SEG = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
BRANCH = np.array([[0, 0, 0, 1, 1, 2, 2, 2, 0, 0], [0, 0, 1, 1, 0, 1, 2, 2, 0, 0]])


def test_branch_mask_matches_loop_reference():
  got = causal_segment_mask(jnp.asarray(SEG), jnp.asarray(BRANCH))
  np.testing.assert_array_equal(got, _np_mask(SEG, BRANCH))
  # response 2 of row 0 (index 5) sees the prompt and itself, not response 1 (3, 4)
  np.testing.assert_array_equal(np.asarray(got)[0, 0, 5], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0])
  # without branch ids it is the plain causal + segment mask
  np.testing.assert_array_equal(causal_segment_mask(jnp.asarray(SEG)),
                                _np_mask(SEG, np.zeros_like(SEG)))


@pytest.mark.parametrize("heads", [(4, 2), (2, 2)])
def test_dot_product_attention_glue_equals_dense(heads):
  h, g = heads
  rng = np.random.default_rng(0)
  b, t, hd = SEG.shape[0], SEG.shape[1], 8
  q = jnp.asarray(rng.standard_normal((b, t, h, hd)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((b, t, g, hd)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((b, t, g, hd)), jnp.float32)
  mask = causal_segment_mask(jnp.asarray(SEG), jnp.asarray(BRANCH))
  dense = attend(q, k, v, mask, scale=0.3, kernel="dense")
  xla = attend(q, k, v, mask, scale=0.3, kernel="xla")
  real = SEG != 0                       # padding queries are never read
  np.testing.assert_allclose(np.asarray(dense)[real], np.asarray(xla)[real], rtol=1e-5, atol=1e-6)
  assert np.isfinite(np.asarray(xla)).all()


def test_kernel_selection():
  assert select_kernel("cpu", jnp.bfloat16) == "dense"
  assert select_kernel("gpu", jnp.float32) == "dense"          # cuDNN flash attention is 16-bit
  assert select_kernel("gpu", jnp.bfloat16) == "cudnn"
  assert select_kernel("gpu", jnp.bfloat16, softcap=50.0) == "dense"
  assert select_kernel("gpu", jnp.bfloat16, head_dim=256) == "dense"
  with pytest.raises(ValueError, match="dense"):
    x = jnp.zeros((1, 2, 1, 8))
    attend(x, x, x, jnp.ones((1, 1, 2, 2), bool), scale=1.0, softcap=1.0, kernel="xla")


@pytest.mark.parametrize("block,softcap", [(3, None), (4, 30.0), (16, None)])
def test_causal_blocks_equal_full_dense(block, softcap):
  # Query blocks against keys up to each block's end (T = 10 is not a multiple of 3 or 4;
  # 16 > T is the plain path): values and gradients equal the full (T, T) computation.
  rng = np.random.default_rng(1)
  b, t, h, g, hd = 2, SEG.shape[1], 4, 2, 8
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.float32) for n in (h, g, g))
  mask = causal_segment_mask(jnp.asarray(SEG), jnp.asarray(BRANCH))

  def loss(q, k, v, causal_block):
    out = attend(q, k, v, mask, scale=hd ** -0.5, softcap=softcap, causal_block=causal_block)
    real = jnp.asarray(SEG != 0)[:, :, None, None]
    return jnp.sum(jnp.where(real, out, 0.0) * jnp.cos(jnp.arange(hd))), out

  (l_full, o_full), g_full = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, 0)
  (l_blk, o_blk), g_blk = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, block)
  real = (SEG != 0)[:, :, None, None]
  np.testing.assert_allclose(np.where(real, o_blk, 0), np.where(real, o_full, 0), atol=1e-6)
  np.testing.assert_allclose(l_blk, l_full, rtol=1e-6)
  for a, e in zip(g_blk, g_full):
    np.testing.assert_allclose(a, e, atol=1e-6)
