"""Building blocks: RMSNorm / LayerNorm, rotary embeddings, the MLP, and parameter helpers.

Every parameter carries ``logical_axes`` metadata (``embed``, ``mlp``, ``heads``, ``kv_heads``,
``head_dim``, ``vocab``, ``norm``) so that sharding is a table of rules (prefjax/sharding.py).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefjax.errors import ConfigError


def acc_dtype(dtype):
  """The dtype norms, softmax and logits are computed in: at least float32 (float64 stays)."""
  return jnp.promote_types(dtype, jnp.float32)


def param(rngs: nnx.Rngs, shape, axes, *, init="normal", scale=None, dtype=jnp.float32):
  """An ``nnx.Param`` initialised as fan-in scaled normal, zeros or ones, with logical axes."""
  if init == "zeros":
    value = jnp.zeros(shape, dtype)
  elif init == "ones":
    value = jnp.ones(shape, dtype)
  else:
    std = scale if scale is not None else shape[0] ** -0.5
    value = (std * jax.random.normal(rngs.params(), shape)).astype(dtype)
  # eager_sharding=False: placement is decided by the rule table at jit time, not here.
  return nnx.Param(value, logical_axes=tuple(axes), eager_sharding=False)


def weight(var: nnx.Variable, dtype):
  """A projection's weight as a dense array of ``dtype``, formed where the layer uses it.

  A parameter holds an array, or a deferred weight with a ``materialize(dtype)`` method: a
  quantized frozen weight (``prefjax.models.quant.QuantizedWeight``) or such a weight plus
  low-rank adapters (``prefjax.models.lora.Adapted``). Reading it here, inside the block,
  keeps the dense copy local to the block (and, under ``remat="block"``, to its backward step).
  """
  value = var.get_value()
  if hasattr(value, "materialize"):
    return value.materialize(dtype)
  return value.astype(dtype)


def transposed(x):
  """``x.T`` (2-D); on CPU a physical copy behind an optimization barrier.

  XLA:CPU runs a dot through YNNPACK only when its LHS contracts over the minor dimension;
  a weight gradient ``x^T @ g`` (contracting over tokens, the major dimension of both) falls
  back to Eigen, ~2.5x slower at SmolLM2's shapes (measured: scripts/benchmark_dpo.py,
  README). The barrier keeps XLA from folding the transpose back into the dot.
  """
  if jax.default_backend() == "cpu":
    return jax.lax.optimization_barrier(x.T)
  return x.T


@jax.custom_vjp
def dense(x, w):
  """``x [..., K] @ w [K, N]`` whose weight gradient is one canonical dot (``transposed``)."""
  return x @ w


def _dense_fwd(x, w):
  return x @ w, (x, w)


def _dense_bwd(res, g):
  x, w = res
  k, n = w.shape
  dw = transposed(x.reshape(-1, k)) @ g.reshape(-1, n)                    # sum over tokens
  return g @ w.T, dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * (offset + w), computed in float32.

  ``offset=1`` is Gemma's convention (weights stored around 0, initialised to 0).
  """

  def __init__(self, dim: int, eps: float, rngs: nnx.Rngs, param_dtype=jnp.float32,
               offset: float = 0.0):
    self.eps, self.offset = eps, offset
    self.scale = param(rngs, (dim,), ("norm",), init="zeros" if offset else "ones",
                       dtype=param_dtype)

  def __call__(self, x):
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    x = x.astype(acc)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * (self.offset + self.scale[...].astype(acc))).astype(dtype)


class LayerNorm(nnx.Module):
  """y = (x - mean(x)) / sqrt(var(x) + eps) * w + b, computed in float32 (GPT-2)."""

  def __init__(self, dim: int, eps: float, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = param(rngs, (dim,), ("norm",), init="ones", dtype=param_dtype)
    self.bias = param(rngs, (dim,), ("norm",), init="zeros", dtype=param_dtype)

  def __call__(self, x):
    dtype, acc = x.dtype, acc_dtype(x.dtype)
    x = x.astype(acc)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * self.scale[...].astype(acc) + self.bias[...].astype(acc)).astype(dtype)


def make_norm(cfg, rngs: nnx.Rngs, dim: int | None = None):
  """The config's norm ("rms" with ``norm_offset``, or "layer") over ``dim`` (default cfg.dim)."""
  pd = jnp.dtype(cfg.param_dtype)
  dim = dim or cfg.dim
  if cfg.norm == "layer":
    return LayerNorm(dim, cfg.norm_eps, rngs, pd)
  return RMSNorm(dim, cfg.norm_eps, rngs, pd, offset=cfg.norm_offset)


def rope_inv_freq(head_dim: int, theta: float, scaling=None) -> np.ndarray:
  """Inverse frequencies theta^(-2i/D), i < D/2, with optional HF rope scaling, float32.

  ``scaling`` is a mapping with ``rope_type`` "linear" (divide by ``factor``) or "llama3"
  (Llama 3.1's band-wise rescaling of low frequencies; transformers'
  ``_compute_llama3_parameters``).
  """
  inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  inv = inv.astype(np.float32)
  if not scaling:
    return inv
  s = dict(scaling)
  kind = s.get("rope_type", s.get("type", "default"))
  if kind == "default":
    return inv
  if kind == "linear":
    return (inv / np.float32(s["factor"])).astype(np.float32)
  if kind == "llama3":
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    out = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    return np.where(medium, smoothed, out).astype(np.float32)
  raise ConfigError(f"rope_scaling rope_type={kind!r} is not supported; "
                    "supported: default, linear, llama3")


def rope(x_bthd, positions_bt, theta: float, inv_freq=None):
  """Rotary position embedding, half-split ("rotate_half") convention as in HF Llama.

  x * cos + rotate_half(x) * sin, with frequencies theta^(-2i/D) for i < D/2 (or the
  given ``inv_freq``, e.g. from ``rope_inv_freq`` with scaling).
  """
  d = x_bthd.shape[-1]
  if inv_freq is None:
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))      # (D/2,)
  angles = positions_bt[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)     # (B, T, D/2)
  # Angles in float32 as transformers computes them (also for a float64 model).
  acc = acc_dtype(x_bthd.dtype)
  cos = jnp.cos(angles).astype(acc)[:, :, None, :]                                 # (B, T, 1, D/2)
  sin = jnp.sin(angles).astype(acc)[:, :, None, :]
  x = x_bthd.astype(acc)
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_bthd.dtype)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class MLP(nnx.Module):
  """Gated: down(act(gate(x)) * up(x)) (SwiGLU / GeGLU); plain: down(act(up(x))) (GPT-2)."""

  def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs, param_dtype=jnp.float32, *,
               gated: bool = True, act: str = "silu", bias: bool = False):
    self.gated, self.act = gated, act
    if gated:
      self.gate = param(rngs, (dim, hidden), ("embed", "mlp"), dtype=param_dtype)
    self.up = param(rngs, (dim, hidden), ("embed", "mlp"), dtype=param_dtype)
    self.down = param(rngs, (hidden, dim), ("mlp", "embed"), dtype=param_dtype)
    if bias:
      if gated:
        self.gate_bias = param(rngs, (hidden,), ("mlp",), init="zeros", dtype=param_dtype)
      self.up_bias = param(rngs, (hidden,), ("mlp",), init="zeros", dtype=param_dtype)
      self.down_bias = param(rngs, (dim,), ("embed",), init="zeros", dtype=param_dtype)
    self.bias = bias

  def __call__(self, x_btd):
    dtype = x_btd.dtype
    act = ACTIVATIONS[self.act]
    b = (lambda name: getattr(self, name)[...].astype(dtype)) if self.bias else (lambda _: 0)
    u = dense(x_btd, weight(self.up, dtype)) + b("up_bias")                    # (B, T, F)
    if self.gated:
      h = act(dense(x_btd, weight(self.gate, dtype)) + b("gate_bias")) * u
    else:
      h = act(u)
    return dense(h, weight(self.down, dtype)) + b("down_bias")                 # (B, T, D)
