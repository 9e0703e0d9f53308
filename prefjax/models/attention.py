"""Grouped-query causal self-attention with segment/padding masking and a functional KV cache.

Masking rule (training, no cache): query q may attend to key k iff
  k <= q  and  segment[k] == segment[q]  and  segment[k] != 0,
where segment id 0 marks padding. Packed sequences get distinct segment ids.

With a cache (generation), keys live in a fixed buffer of length S; a query written at
buffer slot ``index + t`` may attend to slot s iff s <= index + t and the slot's segment
id is non-zero (left padding of prompts has segment 0).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax.models.layers import param, rope

_NEG = -1e30  # finite "minus infinity": a fully masked row stays finite (it is never read).


def causal_segment_mask(segment_ids_bt):
  """(B, 1, T, T) boolean mask for training-time attention."""
  t = segment_ids_bt.shape[1]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))
  same = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
  valid_key = (segment_ids_bt != 0)[:, None, :]
  return (causal[None] & same & valid_key)[:, None]                                 # (B, 1, T, T)


def cache_mask(cache_segment_ids_bs, index, t):
  """(B, 1, T, S) mask for T new queries written at slots index..index+T-1."""
  s = cache_segment_ids_bs.shape[1]
  q_slot = index + jnp.arange(t)[:, None]                                           # (T, 1)
  causal = jnp.arange(s)[None, :] <= q_slot                                         # (T, S)
  return (causal[None] & (cache_segment_ids_bs != 0)[:, None, :])[:, None]


class Attention(nnx.Module):

  def __init__(self, cfg, rngs: nnx.Rngs):
    d, h, kv, hd = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pd = jnp.dtype(cfg.param_dtype)
    self.n_heads, self.n_kv_heads, self.head_dim = h, kv, hd
    self.rope_theta = cfg.rope_theta
    self.q = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), dtype=pd)
    self.k = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dtype=pd)
    self.v = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dtype=pd)
    self.o = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), dtype=pd,
                   scale=(h * hd) ** -0.5)

  def __call__(self, x_btd, positions_bt, mask_b1ts, kv_cache=None, cache_index=None):
    """Returns (output (B, T, D), updated (k, v) cache or None)."""
    dtype = x_btd.dtype
    q = jnp.einsum("btd,dhk->bthk", x_btd, self.q[...].astype(dtype))                # (B, T, H, K)
    k = jnp.einsum("btd,dhk->bthk", x_btd, self.k[...].astype(dtype))                # (B, T, G, K)
    v = jnp.einsum("btd,dhk->bthk", x_btd, self.v[...].astype(dtype))
    q = rope(q, positions_bt, self.rope_theta)
    k = rope(k, positions_bt, self.rope_theta)

    new_cache = None
    if kv_cache is not None:
      ck, cv = kv_cache                                                             # (B, S, G, K)
      ck = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
      cv = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
      k, v, new_cache = ck.astype(dtype), cv.astype(dtype), (ck, cv)

    b, t, h, hd = q.shape
    g = self.n_kv_heads
    q = q.reshape(b, t, g, h // g, hd)                                              # (B, T, G, R, K)
    scores = jnp.einsum("btgrk,bsgk->bgrts", q, k).astype(jnp.float32) * hd ** -0.5   # (B, G, R, T, S)
    scores = jnp.where(mask_b1ts[:, :, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bgrts,bsgk->btgrk", probs, v).reshape(b, t, h, hd)            # (B, T, H, K)
    return jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dtype)), new_cache
