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


@pytest.mark.parametrize("heads,causal_block", [((4, 2), 0), ((2, 2), 0), ((4, 2), 4)])
def test_dot_product_attention_glue_equals_dense(heads, causal_block):
  # causal_block > 0 also declares the mask causal (is_causal=True beside the mask)
  h, g = heads
  rng = np.random.default_rng(0)
  b, t, hd = SEG.shape[0], SEG.shape[1], 8
  q = jnp.asarray(rng.standard_normal((b, t, h, hd)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((b, t, g, hd)), jnp.float32)
  v = jnp.asarray(rng.standard_normal((b, t, g, hd)), jnp.float32)
  mask = causal_segment_mask(jnp.asarray(SEG), jnp.asarray(BRANCH))
  dense = attend(q, k, v, mask, scale=0.3, kernel="dense")
  xla = attend(q, k, v, mask, scale=0.3, kernel="xla", causal_block=causal_block)
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

  with jax.default_matmul_precision("highest"):   # GPUs default to TF32 float32 matmuls
    (l_full, o_full), g_full = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, 0)
    (l_blk, o_blk), g_blk = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(q, k, v, block)
  real = (SEG != 0)[:, :, None, None]
  np.testing.assert_allclose(np.where(real, o_blk, 0), np.where(real, o_full, 0), atol=1e-6)
  np.testing.assert_allclose(l_blk, l_full, rtol=1e-6)
  for a, e in zip(g_blk, g_full):
    np.testing.assert_allclose(a, e, atol=1e-6)


def _plain_attention(q, k, v, mask, scale, softcap):
  """The formula differentiated by autodiff (independent of the kernel's custom VJP)."""
  b, t, h, hd = q.shape
  g = k.shape[2]
  qg = q.reshape(b, t, g, h // g, hd).astype(jnp.float32)
  s = jnp.einsum("btgrk,bsgk->bgrts", qg, k.astype(jnp.float32)) * scale
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  s = jnp.where(mask[:, :, None], s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  p = jnp.where(jnp.isnan(p), 0.0, p)                 # fully masked (padding) rows
  return jnp.einsum("bgrts,bsgk->btgrk", p, v.astype(jnp.float32)).reshape(b, t, h, hd)


@pytest.mark.parametrize("heads,softcap", [((4, 2), None), ((3, 3), 20.0), ((4, 1), None)])
def test_dense_kernel_vjp_equals_autodiff_of_the_formula(heads, softcap):
  # The dense kernel recomputes the probabilities in its backward pass; values and
  # gradients equal jax.grad of the plain formula (masks with padding, packed segments and
  # prefix-shared branches; grouped-query heads; softcapping).
  h, g = heads
  rng = np.random.default_rng(2)
  b, t, hd = SEG.shape[0], SEG.shape[1], 8
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.float32) for n in (h, g, g))
  mask = causal_segment_mask(jnp.asarray(SEG), jnp.asarray(BRANCH))
  real = jnp.asarray(SEG != 0)[:, :, None, None]
  w = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)

  def loss(fn, q, k, v):
    return jnp.sum(jnp.where(real, fn(q, k, v), 0.0) * w)

  ours = lambda q, k, v: attend(q, k, v, mask, scale=0.4, softcap=softcap, kernel="dense")
  ref = lambda q, k, v: _plain_attention(q, k, v, mask, 0.4, softcap)
  np.testing.assert_allclose(np.where(real, ours(q, k, v), 0), np.where(real, ref(q, k, v), 0),
                             atol=1e-6)
  g_ours = jax.jit(jax.grad(lambda *a: loss(ours, *a), (0, 1, 2)))(q, k, v)
  g_ref = jax.grad(lambda *a: loss(ref, *a), (0, 1, 2))(q, k, v)
  for a, e in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, e, atol=2e-6, rtol=1e-5)
    assert np.abs(np.asarray(e)).max() > 0.1           # not a vacuous comparison
  # bfloat16 inputs: finite, close to float32
  g_bf = jax.grad(lambda *a: loss(ours, *a), (0, 1, 2))(
      *(x.astype(jnp.bfloat16) for x in (q, k, v)))
  for a, e in zip(g_bf, g_ref):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), e, atol=0.1, rtol=0.05)


_LAYERS_PROBE = r"""
import json, sys
import jax, jax.numpy as jnp
sys.path.insert(0, sys.argv[1])
from test_attention_kernels import _plain_attention
from prefjax.models.attention import attend, causal_segment_mask
b, t, h, hd = 1, 512, 4, 16
x = jnp.ones((b, t, h, hd), jnp.float32)
mask = causal_segment_mask(jnp.ones((b, t), jnp.int32))

def temp_bytes(fn):
  def loss(x):
    for _ in range(8):
      x = jnp.tanh(fn(x, x[:, :, :2], x[:, :, :2]))
    return jnp.sum(x)
  stats = jax.jit(jax.grad(loss)).lower(x).compile().memory_analysis()
  return None if stats is None else stats.temp_size_in_bytes

print(json.dumps(dict(
    ours=temp_bytes(lambda q, k, v: attend(q, k, v, mask, scale=0.25, kernel="dense")),
    plain=temp_bytes(lambda q, k, v: _plain_attention(q, k, v, mask, 0.25, None)))))
"""


def test_dense_kernel_backward_keeps_no_probabilities_across_layers():
  # Eight attention layers in a row: autodiff of the plain formula keeps every layer's
  # (T, T) probabilities for the backward pass; the kernel's VJP keeps none, so the
  # compiled gradient's temporaries are much smaller. Run under XLA:CPU's memory scheduler
  # (prefjax.xla_cpu), in a fresh process: the default concurrency scheduler keeps
  # recomputed buffers alive regardless, hiding the difference.
  import json, os, subprocess, sys
  from prefjax import xla_cpu
  env = dict(os.environ, XLA_FLAGS=f"--{xla_cpu.FLAG}=false", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _LAYERS_PROBE, os.path.dirname(__file__)],
                       env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-2000:]
  t = json.loads(res.stdout.strip().splitlines()[-1])
  if t["ours"] is None:
    pytest.skip("this backend reports no memory analysis")
  tt = 1 * 4 * 512 * 512 * 4                            # one layer's float32 probabilities
  assert t["plain"] > 8 * tt, t                         # autodiff keeps >= 1 per layer
  assert t["ours"] < 0.6 * t["plain"], t                # measured: 22 vs 42 MB


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_equals_dense_on_prefix_shared_packed_rows():
  # Values and q/k/v gradients of the cuDNN kernel (causal, no mask gradient) against the
  # dense kernel on packed prefix-shared rows, bfloat16 inputs (cuDNN's precision).
  rng = np.random.default_rng(2)
  reps = 32                                        # T = 320: several cuDNN tiles
  seg = jnp.asarray(np.repeat(SEG, reps, axis=1))
  branch = jnp.asarray(np.repeat(BRANCH, reps, axis=1))
  b, t, h, g, hd = 2, seg.shape[1], 4, 2, 64
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.bfloat16) for n in (h, g, g))
  mask = causal_segment_mask(seg, branch)
  real = (seg != 0)[:, :, None, None]
  w = jnp.asarray(rng.normal(size=(hd,)), jnp.float32)

  def loss(q, k, v, kernel):
    out = attend(q, k, v, mask, scale=hd ** -0.5, kernel=kernel, causal_block=128)
    return jnp.sum(jnp.where(real, out.astype(jnp.float32), 0.0) * w), out

  grad = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True), static_argnums=3)
  (l_d, o_d), g_d = grad(q, k, v, "dense")
  (l_c, o_c), g_c = grad(q, k, v, "cudnn")
  sel = np.asarray(real[..., 0, 0])
  np.testing.assert_allclose(np.asarray(o_c, np.float32)[sel], np.asarray(o_d, np.float32)[sel],
                             atol=2e-2, rtol=2e-2)
  for a, d in zip(g_c, g_d):
    a, d = np.asarray(a, np.float32), np.asarray(d, np.float32)
    assert np.abs(a - d).max() <= 2e-2 * np.abs(d).max() + 1e-3


# ---------------------------------------------------------------------------------------------
# The blockwise (flash) kernel. Stated float32 tolerance against the dense kernel, both under
# "highest" matmul precision: values 2e-6 and q/k/v gradients 5e-6 absolute (measured on CPU:
# 3.6e-7 and 1.4e-6), on packed rows with prefix-shared branches and padding.

def _blockwise_inputs(heads, reps=3, seed=3):
  h, g = heads
  rng = np.random.default_rng(seed)
  seg = jnp.asarray(np.repeat(SEG, reps, axis=1))           # T = 30: blocks of 4 and 7 do not divide it
  branch = jnp.asarray(np.repeat(BRANCH, reps, axis=1))
  b, t, hd = seg.shape[0], seg.shape[1], 8
  q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.float32) for n in (h, g, g))
  w = jnp.asarray(rng.normal(size=(b, t, h, hd)), jnp.float32)
  return seg, causal_segment_mask(seg, branch), q, k, v, w


@pytest.mark.parametrize("block,causal", [(4, True), (7, True), (7, False), (64, True)])
@pytest.mark.parametrize("heads,softcap", [((4, 2), None), ((3, 3), 5.0), ((4, 1), None)])
def test_blockwise_equals_dense_on_packed_prefix_shared_rows(block, causal, heads, softcap):
  from prefjax.models.attention import blockwise_attention
  seg, mask, q, k, v, w = _blockwise_inputs(heads)
  real = (seg != 0)[:, :, None, None]

  def loss(fn, q, k, v):
    return jnp.sum(jnp.where(real, fn(q, k, v), 0.0) * w)

  dense = lambda q, k, v: attend(q, k, v, mask, scale=0.4, softcap=softcap, kernel="dense")
  blockwise = lambda q, k, v: blockwise_attention(q, k, v, mask, scale=0.4, softcap=softcap,
                                                  causal=causal, block=block)
  with jax.default_matmul_precision("highest"):
    o_d, o_b = dense(q, k, v), jax.jit(blockwise)(q, k, v)
    g_d = jax.grad(lambda *a: loss(dense, *a), (0, 1, 2))(q, k, v)
    g_b = jax.jit(jax.grad(lambda *a: loss(blockwise, *a), (0, 1, 2)))(q, k, v)
  sel = np.asarray(real[..., 0, 0])
  np.testing.assert_allclose(np.asarray(o_b)[sel], np.asarray(o_d)[sel], atol=2e-6)
  assert np.all(np.asarray(o_b)[~sel] == 0.0)               # padding queries see no key: 0
  for a, e in zip(g_b, g_d):
    np.testing.assert_allclose(a, e, atol=5e-6)
    assert np.abs(np.asarray(e)).max() > 0.1                 # not a vacuous comparison


def test_blockwise_through_attend_and_bfloat16():
  seg, mask, q, k, v, w = _blockwise_inputs((4, 2))
  sel = np.asarray(seg != 0)
  with jax.default_matmul_precision("highest"):
    ref = attend(q, k, v, mask, scale=0.3, kernel="dense")
    got = attend(q, k, v, mask, scale=0.3, kernel="blockwise", causal_block=8)   # causal
  np.testing.assert_allclose(np.asarray(got)[sel], np.asarray(ref)[sel], atol=2e-6)
  bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  g = jax.grad(lambda *a: jnp.sum(attend(*a, mask, scale=0.3, kernel="blockwise").astype(
      jnp.float32) * w), (0, 1, 2))(*bf)
  out = attend(*bf, mask, scale=0.3, kernel="blockwise")
  assert out.dtype == jnp.bfloat16 and all(x.dtype == jnp.bfloat16 for x in g)
  np.testing.assert_allclose(np.asarray(out, np.float32)[sel], np.asarray(ref)[sel], atol=0.05)
  assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in g)


def test_model_with_blockwise_attention_equals_dense():
  # ModelConfig.attention_kernel selects the kernel; logits and gradients of the
  # transformer on packed prefix-shared rows match the dense kernel's.
  from flax import nnx
  from prefjax.errors import ConfigError
  from prefjax.models import Transformer, make_config
  cfg = make_config(None, vocab_size=50, overrides=dict(
      dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=48, max_len=64))
  seg = jnp.asarray(np.repeat(SEG, 3, axis=1))
  branch = jnp.asarray(np.repeat(BRANCH, 3, axis=1))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, seg.shape), jnp.int32)
  pos = jnp.broadcast_to(jnp.arange(seg.shape[1]), seg.shape)
  sel = np.asarray(seg != 0)
  out = {}
  for kernel in ("dense", "blockwise"):
    model = Transformer(cfg.replace(attention_kernel=kernel), nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def f(p):
      logits = nnx.merge(graphdef, p)(tokens, pos, seg, branch_ids_bt=branch)[0]
      return jnp.sum(jnp.where(seg[..., None] != 0, jnp.tanh(logits), 0.0)), logits

    with jax.default_matmul_precision("highest"):
      (_, logits), grads = jax.value_and_grad(f, has_aux=True)(params)
    out[kernel] = (np.asarray(logits)[sel], jax.tree.leaves(grads))
  np.testing.assert_allclose(out["blockwise"][0], out["dense"][0], atol=1e-5)
  for a, e in zip(out["blockwise"][1], out["dense"][1]):   # sums over many tokens: relative
    assert np.abs(a - e).max() <= 1e-5 * max(1.0, np.abs(e).max()), np.abs(a - e).max()
  with pytest.raises(ConfigError, match="attention_kernel"):
    cfg.replace(attention_kernel="flash")


_LINEAR_PROBE = r"""
import json, sys
import jax, jax.numpy as jnp
from prefjax.models.attention import attend, causal_segment_mask
b, h, hd = 1, 4, 16

def temp_bytes(kernel, t):
  x = jax.ShapeDtypeStruct((b, t, h, hd), jnp.float32)
  mask = jax.ShapeDtypeStruct((b, 1, t, t), jnp.bool_)     # an input: shared by every layer
  def loss(x, mask):
    for _ in range(2):
      x = jnp.tanh(attend(x, x[:, :, :2], x[:, :, :2], mask, scale=0.25, kernel=kernel,
                          causal_block=256))
    return jnp.sum(x)
  stats = jax.jit(jax.grad(loss)).lower(x, mask).compile().memory_analysis()
  return None if stats is None else stats.temp_size_in_bytes

print(json.dumps({k: [temp_bytes(k, t) for t in (1024, 2048, 4096)]
                  for k in ("dense", "blockwise")}))
"""


def test_blockwise_memory_grows_linearly_in_sequence_length():
  # The gradient of two attention layers at T = 1024, 2048, 4096 (mask given as an input):
  # the dense kernel's temporaries grow ~4x per doubling (T x S scores per head), the
  # blockwise kernel's ~2x (its scores are 512 x 512 blocks).
  import json, os, subprocess, sys
  from prefjax import xla_cpu
  env = dict(os.environ, XLA_FLAGS=f"--{xla_cpu.FLAG}=false", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _LINEAR_PROBE], env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-2000:]
  t = json.loads(res.stdout.strip().splitlines()[-1])
  print(t)
  if t["blockwise"][0] is None:
    pytest.skip("this backend reports no memory analysis")
  d, bw = t["dense"], t["blockwise"]
  assert d[2] / d[1] > 3.0, t                               # quadratic
  assert bw[2] / bw[1] < 2.5 and bw[1] / bw[0] < 2.5, t      # linear
  assert bw[2] < d[2] / 4, t
