"""Blockwise int8 / int4 quantisation of a frozen base, and LoRA on it.

Round trips against a numpy transcription (|w - deq| <= scale / 2); the quantized-base model
(with and without adapters, remat block, scan or not) against the float model built from the
dequantized weights; bytes per base parameter.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prefjax.errors import ConfigError
from prefjax.models import Transformer, make_config, sequence_logps
from prefjax.models import lora, quant


def _numpy_quantize(w, n_in, q_max, block):
  """Reference: per block of ``block`` input values and output column, s = absmax / Q."""
  k = int(np.prod(w.shape[:n_in]))
  x = w.reshape(k // block, block, -1).astype(np.float64)
  s = np.abs(x).max(axis=1) / q_max
  q = np.clip(np.round(x / np.where(s == 0, 1, s)[:, None]), -q_max, q_max)
  return (q * s[:, None]).reshape(w.shape), s


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape,n_in,block", [((128, 24), 1, 64), ((4, 16, 8), 2, 32),
                                              ((64, 4, 8), 1, 32)])
def test_round_trip_matches_numpy_and_error_bound(bits, shape, n_in, block):
  w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  w[:block, ...] *= 10                                          # blocks of different scales
  qw = quant.quantize(jnp.asarray(w), n_in=n_in, bits=bits, block=block)
  deq = np.asarray(quant.dequantize(qw, jnp.float32))
  want, s = _numpy_quantize(w, n_in, quant.LEVELS[bits], block)
  np.testing.assert_allclose(np.asarray(qw.scales).reshape(s.shape), s, rtol=1e-6)
  np.testing.assert_allclose(deq, want, rtol=1e-6, atol=1e-6)
  per_elem = np.repeat(s, block, axis=0).reshape(shape)         # the scale of each element
  assert np.all(np.abs(w - deq) <= per_elem / 2 * (1 + 1e-6))
  assert qw.values.dtype == (jnp.int8 if bits == 8 else jnp.uint8)


def test_zero_block_and_extremes():
  w = np.zeros((64, 3), np.float32)
  w[:, 1] = np.linspace(-1, 1, 64)
  for bits in (8, 4):
    deq = np.asarray(quant.dequantize(quant.quantize(w, bits=bits, block=32)))
    assert np.all(deq[:, 0] == 0)                               # all-zero block: exact zeros
    assert deq[0, 1] == -1 and deq[-1, 1] == 1                  # absmax is exact


def test_bad_block_and_bits_are_config_errors():
  with pytest.raises(ConfigError, match="not a multiple of the block"):
    quant.quantize(np.ones((48, 4), np.float32), block=32)
  with pytest.raises(ConfigError, match="bits"):
    quant.quantize(np.ones((64, 4), np.float32), bits=3)


# ----------------------------------------------------------------------------- the model
def _cfg(**kw):
  base = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128,
              max_len=32, remat="block")
  base.update(kw)
  return make_config(None, vocab_size=13, overrides=base)


def _data(b=3, t=10):
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 13, (b, t)).astype(np.int32)
  seg = np.ones((b, t), np.int32)
  seg[1, 7:] = 0
  pos = np.arange(t, dtype=np.int32)[None].repeat(b, 0)
  mask = (seg != 0).astype(np.float32)
  mask[:, :3] = 0
  return tokens, pos, seg, np.roll(tokens, -1, 1), mask


@pytest.fixture(scope="module")
def base():
  params = nnx.to_pure_dict(nnx.state(Transformer(_cfg(), nnx.Rngs(0))))
  lo = lora.init_lora(params, lora.LoraConfig(rank=4, alpha=8.0), jax.random.PRNGKey(1))
  rng = np.random.default_rng(2)
  lo = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), lo)
  return params, lo


def _loss(cfg, compose):
  graphdef = nnx.graphdef(Transformer(cfg, nnx.Rngs(0)))
  tokens, pos, seg, targets, mask = _data()

  def loss(adapters, frozen):
    logits, _ = nnx.merge(graphdef, compose(adapters, frozen))(tokens, pos, seg)
    return -(sequence_logps(logits, targets, mask)[0] * jnp.arange(1.0, 4.0)).sum()
  return jax.jit(jax.value_and_grad(loss))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scan", [False, True])
def test_lora_on_quantized_base_equals_float_model_of_dequantized_weights(base, bits, scan):
  """Loss and adapter gradients: quantized base (dequantized inside each block) vs the float
  model holding the dequantized weights, adapters merged as usual; float32, loss rtol 1e-5,
  gradients within 1e-5 of each array's largest entry (summation order differs)."""
  params, lo = base
  qbase = quant.quantize_params(params, bits=bits, block=32)
  deq = lora.dense_params(qbase)
  cfg = _cfg(scan_layers=scan)
  compose = lambda a, b: lora.apply_lora(b, a, 2.0)
  l_q, g_q = _loss(cfg, compose)(lo, qbase)
  l_f, g_f = _loss(cfg, compose)(lo, deq)
  np.testing.assert_allclose(float(l_q), float(l_f), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_q)):   # 1e-5 of each array's scale
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * float(jnp.abs(a).max()))
  # The quantized model itself (no adapters, the DPO reference) differs from the float one
  # by the quantisation error only.
  l_ref, _ = _loss(cfg, lambda a, b: b)(lo, qbase)
  l_ref_f, _ = _loss(cfg, lambda a, b: b)(lo, deq)
  np.testing.assert_allclose(float(l_ref), float(l_ref_f), rtol=1e-5)


def test_dequantized_weights_close_to_original(base):
  params, _ = base
  for bits, tol in ((8, 0.02), (4, 0.3)):
    deq = lora.dense_params(quant.quantize_params(params, bits=bits))
    w, d = params["blocks"][0]["mlp"]["up"], deq["blocks"][0]["mlp"]["up"]
    rel = float(jnp.linalg.norm(w - d) / jnp.linalg.norm(w))
    assert rel < tol, (bits, rel)
    assert np.array_equal(deq["embed"], params["embed"])         # embeddings stay float


def test_no_float_base_in_remat_residuals(base):
  """Under remat="block" the forward keeps no dequantized [D, F] weight for the backward pass."""
  saved_residuals = pytest.importorskip("jax._src.ad_checkpoint").saved_residuals
  params, lo = base
  qbase = quant.quantize_params(params, bits=8)
  cfg = _cfg()
  graphdef = nnx.graphdef(Transformer(cfg, nnx.Rngs(0)))
  tokens, pos, seg, _, _ = _data()
  f = lambda a: nnx.merge(graphdef, lora.apply_lora(qbase, a, 2.0))(tokens, pos, seg)[0].sum()
  shapes = [r.shape for r, _ in saved_residuals(f, lo)]
  w_shapes = {tuple(w.shape) for w in jax.tree.leaves(params["blocks"][0])}
  assert not any(s in w_shapes and len(s) >= 2 for s in shapes if s != (13, 64)), shapes


@pytest.mark.parametrize("bits,block,want", [(8, 64, 1 + 4 / 64), (4, 64, 0.5 + 4 / 64),
                                             (8, 32, 1 + 4 / 32)])
def test_bytes_per_base_parameter(base, bits, block, want):
  params, _ = base
  nbytes, n = quant.base_bytes(quant.quantize_params(params, bits=bits, block=block))
  assert nbytes / n == pytest.approx(want)
  nbytes, n = quant.base_bytes(params)
  assert nbytes / n == 4.0


def test_quantize_params_targets_and_shardings(base):
  params, _ = base
  q = quant.quantize_params(params, bits=4, targets=("q", "down"))
  blk = q["blocks"][1]
  assert quant.is_quantized(blk["attn"]["q"]) and quant.is_quantized(blk["mlp"]["down"])
  assert not quant.is_quantized(blk["attn"]["k"])
  from prefjax import sharding
  mesh = sharding.make_mesh(-1, 1, 1)
  sh = sharding.param_shardings(Transformer(_cfg(), nnx.Rngs(0)), mesh)
  qsh = quant.quantized_shardings(q, sh)
  placed = jax.device_put(q, qsh)
  assert jax.tree.structure(placed) == jax.tree.structure(q)
  with pytest.raises(ConfigError, match="unknown target"):
    quant.quantize_params(params, targets=("qq",))


@pytest.mark.parametrize("rows,want_values,want_scales", [
    (1024, ("fsdp", None, None), ("fsdp", None)),     # 16 blocks: the block axis splits 8 ways
    (128, (None, "fsdp", None), (None, None)),         # 2 blocks: the values inside each block
])
def test_quantized_shardings_split_blocks_or_values_inside_them(rows, want_values, want_scales):
  from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P
  mesh = AbstractMesh((8,), ("fsdp",))
  qw = quant.quantize(np.ones((rows, 16), np.float32), n_in=1, bits=8, block=64)
  sh = quant.quantized_shardings({"w": qw}, {"w": NamedSharding(mesh, P("fsdp", None))})["w"]
  assert tuple(sh.values.spec) + (None,) * (3 - len(sh.values.spec)) == want_values
  assert tuple(sh.scales.spec) + (None,) * (2 - len(sh.scales.spec)) == want_scales
