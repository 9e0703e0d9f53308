"""Building blocks: RMSNorm, rotary embeddings, the SwiGLU MLP, and parameter helpers.

Every parameter carries ``logical_axes`` metadata (``embed``, ``mlp``, ``heads``, ``kv_heads``,
``head_dim``, ``vocab``, ``norm``) so that sharding is a table of rules (prefjax/sharding.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


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


class RMSNorm(nnx.Module):
  """y = x / sqrt(mean(x^2) + eps) * w, computed in float32."""

  def __init__(self, dim: int, eps: float, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = param(rngs, (dim,), ("norm",), init="ones", dtype=param_dtype)

  def __call__(self, x):
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * self.scale[...].astype(jnp.float32)).astype(dtype)


def rope(x_bthd, positions_bt, theta: float):
  """Rotary position embedding, half-split ("rotate_half") convention as in HF Llama.

  x * cos + rotate_half(x) * sin, with frequencies theta^(-2i/D) for i < D/2.
  """
  d = x_bthd.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))        # (D/2,)
  angles = positions_bt[..., None].astype(jnp.float32) * inv_freq                  # (B, T, D/2)
  cos = jnp.cos(angles)[:, :, None, :]                                              # (B, T, 1, D/2)
  sin = jnp.sin(angles)[:, :, None, :]
  x = x_bthd.astype(jnp.float32)
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_bthd.dtype)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, dim: int, hidden: int, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.gate = param(rngs, (dim, hidden), ("embed", "mlp"), dtype=param_dtype)
    self.up = param(rngs, (dim, hidden), ("embed", "mlp"), dtype=param_dtype)
    self.down = param(rngs, (hidden, dim), ("mlp", "embed"), dtype=param_dtype)

  def __call__(self, x_btd):
    dtype = x_btd.dtype
    g = x_btd @ self.gate[...].astype(dtype)                                        # (B, T, F)
    u = x_btd @ self.up[...].astype(dtype)
    return (jax.nn.silu(g) * u) @ self.down[...].astype(dtype)                      # (B, T, D)
