"""Remat policies and the scan over layers equal the plain model (loss, gradients, KV cache)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prefjax.models import Transformer, init_cache, make_config, sequence_logps


def _cfg(**kw):
  base = dict(dim=16, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=4, mlp_dim=24, max_len=32)
  base.update(kw)
  return make_config(None, vocab_size=13, overrides=base)


def _data(b=3, t=10):
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 13, (b, t)).astype(np.int32)
  seg = np.ones((b, t), np.int32)
  seg[1, 7:] = 0
  seg[2, 4:] = 2
  pos = np.where(seg == 2, np.arange(t) - 4, np.arange(t)).astype(np.int32)
  targets = np.roll(tokens, -1, 1)
  mask = (seg != 0).astype(np.float32)
  mask[:, :3] = 0
  return tokens, pos, seg, targets, mask


def _loss_and_grads(cfg, params):
  graphdef = nnx.graphdef(Transformer(cfg, nnx.Rngs(0)))
  tokens, pos, seg, targets, mask = _data()

  def loss(p):
    logits, _ = nnx.merge(graphdef, p)(tokens, pos, seg)
    logps, _, _ = sequence_logps(logits, targets, mask)
    return -(logps * jnp.arange(1.0, 4.0)).sum()    # unequal weights: per-row gradients differ
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def plain():
  cfg = _cfg()
  params = nnx.to_pure_dict(nnx.state(Transformer(cfg, nnx.Rngs(0))))
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype), params)
  return cfg, params, _loss_and_grads(cfg, params)


@pytest.mark.parametrize("remat,scan", [("block", False), ("save_matmuls", False),
                                        ("none", True), ("block", True),
                                        ("save_matmuls", True)])
def test_remat_and_scan_equal_the_plain_model(plain, remat, scan):
  cfg, params, (l0, g0) = plain
  l1, g1 = _loss_and_grads(cfg.replace(remat=remat, scan_layers=scan), params)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  assert set(g1["blocks"]) == set(g0["blocks"]) == {0, 1, 2}    # per-layer layout kept
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_remat_saves_fewer_residuals(plain):
  """Floats kept for the backward pass: block < save_matmuls < none, scan or not."""
  saved_residuals = pytest.importorskip("jax._src.ad_checkpoint").saved_residuals
  cfg, params, _ = plain
  tokens, pos, seg, _, _ = _data()

  def saved(remat, scan):
    graphdef = nnx.graphdef(Transformer(cfg.replace(remat=remat, scan_layers=scan), nnx.Rngs(0)))
    f = lambda p: nnx.merge(graphdef, p)(tokens, pos, seg)[0].sum()
    return sum(a.size for a, _ in saved_residuals(f, params))
  for scan in (False, True):
    none, block, matmuls = (saved(r, scan) for r in ("none", "block", "save_matmuls"))
    assert block < matmuls < none, (scan, block, matmuls, none)


def test_scan_with_kv_cache_decodes_like_the_full_forward(plain):
  cfg, params, _ = plain
  model = nnx.merge(nnx.graphdef(Transformer(cfg.replace(scan_layers=True), nnx.Rngs(0))), params)
  rng = np.random.default_rng(6)
  tokens = rng.integers(3, 13, (2, 9)).astype(np.int32)
  seg = np.ones((2, 9), np.int32)
  seg[0, :2] = 0
  pos = np.maximum(np.cumsum(seg, 1) - 1, 0).astype(np.int32)
  full, _ = nnx.merge(nnx.graphdef(Transformer(cfg, nnx.Rngs(0))), params)(tokens, pos, seg)
  cache = init_cache(cfg, 2, 12)
  pre, cache = model(tokens[:, :5], pos[:, :5], seg[:, :5], cache=cache)
  assert cache["k"].shape[0] == cfg.n_layers
  steps = [pre]
  for i in range(5, 9):
    out, cache = model(tokens[:, i:i + 1], pos[:, i:i + 1], seg[:, i:i + 1], cache=cache)
    steps.append(out)
  got = np.concatenate([np.asarray(s) for s in steps], 1)
  np.testing.assert_allclose(got[seg == 1], np.asarray(full)[seg == 1], atol=1e-5)


def test_mixed_layer_types_fall_back_to_the_loop():
  """Gemma 3 style (sliding layers with their own RoPE base): scan_layers still works."""
  cfg = _cfg(n_layers=2, sliding_window=4, layer_types=("sliding", "full"),
             rope_theta_local=100.0)
  params = nnx.to_pure_dict(nnx.state(Transformer(cfg, nnx.Rngs(0))))
  l0, g0 = _loss_and_grads(cfg, params)
  l1, g1 = _loss_and_grads(cfg.replace(scan_layers=True, remat="block"), params)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)


def test_unknown_remat_policy_is_a_config_error():
  from prefjax.errors import ConfigError
  with pytest.raises(ConfigError, match="remat"):
    _cfg(remat="everything")


@pytest.mark.parametrize("remat", ["none", "block"])
def test_ordered_backward_leaves_gradients_unchanged(plain, remat, monkeypatch):
  # Every block's VJP makes the cotangent it passes on depend on its weight gradients
  # (transformer._after) so that XLA cannot defer them; the gradients are those of the
  # unwrapped block.
  from prefjax.models import transformer
  cfg, params, _ = plain
  cfg = cfg.replace(remat=remat)
  l1, g1 = _loss_and_grads(cfg, params)
  monkeypatch.setattr(transformer, "_ordered_backward", lambda fn: fn)
  l0, g0 = _loss_and_grads(cfg, params)
  assert float(l1) == float(l0)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)


def test_after_keeps_an_overflowing_weight_gradient_out_of_dx():
  from prefjax.models.transformer import _after
  dx = jnp.arange(3.0)
  np.testing.assert_array_equal(_after(dx, {"w": jnp.array([jnp.inf, 1.0])}), dx)
  np.testing.assert_array_equal(_after(dx, {"w": jnp.array([2.0, 1.0]), "i": jnp.ones(2, int)}),
                                dx)


_DEPTH_PROBE = r"""
import json, sys
import jax, jax.numpy as jnp
from flax import nnx
from prefjax.models import Transformer, make_config
from prefjax.models.logprobs import model_token_logps
out = {}
for remat in ("none", "block"):
  for n in (2, 8):
    cfg = make_config(None, vocab_size=256, overrides=dict(
        dim=64, n_layers=n, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=256, max_len=512,
        remat=remat))
    gd, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    ids = jnp.zeros((1, 512), jnp.int32)
    pos = jnp.arange(512)[None]
    loss = lambda p: model_token_logps(nnx.merge(gd, p), ids, pos, jnp.ones_like(ids), ids).sum()
    stats = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis()
    out[f"{remat}{n}"] = None if stats is None else stats.temp_size_in_bytes
print(json.dumps(out))
"""


@pytest.mark.slow
def test_remat_memory_is_flat_in_depth_under_the_memory_scheduler():
  # The whole mechanism on XLA:CPU, in a fresh process with the scheduler prefjax.xla_cpu
  # selects for remat runs: with remat="block" the compiled gradient's temporaries do not
  # grow with depth (2 -> 8 layers), without remat they do (every layer's activations).
  import json, os, subprocess, sys
  from prefjax import xla_cpu
  env = dict(os.environ, XLA_FLAGS=f"--{xla_cpu.FLAG}=false", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _DEPTH_PROBE], env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-2000:]
  t = json.loads(res.stdout.strip().splitlines()[-1])
  if t["block2"] is None:
    pytest.skip("this backend reports no memory analysis")
  grow_none, grow_block = t["none8"] - t["none2"], t["block8"] - t["block2"]
  assert grow_none > 0.5 * t["none2"], t                # 6 more layers of activations
  assert grow_block < 0.3 * grow_none, t                # measured: 1.3 vs 6.6 MB per layer
