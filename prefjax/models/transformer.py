"""The decoder-only transformer (Llama family): pre-norm blocks of attention and SwiGLU MLP.

``Transformer(cfg, rngs)(tokens, positions, segment_ids)`` returns logits (B, T, V).
With ``cache=`` (see ``init_cache``) it also returns the updated cache, for generation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax.models.attention import Attention, cache_mask, causal_segment_mask
from prefjax.models.config import ModelConfig
from prefjax.models.layers import MLP, RMSNorm, param


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps, rngs, pd)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps, rngs, pd)
    self.mlp = MLP(cfg.dim, cfg.mlp_dim, rngs, pd)

  def __call__(self, x, positions, mask, kv_cache=None, cache_index=None):
    h, new_cache = self.attn(self.attn_norm(x), positions, mask, kv_cache, cache_index)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), new_cache


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed = param(rngs, (cfg.vocab_size, cfg.dim), ("vocab", "embed"), scale=1.0, dtype=pd)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.dim, cfg.norm_eps, rngs, pd)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, (cfg.dim, cfg.vocab_size), ("embed", "vocab"), dtype=pd)

  def __call__(self, tokens_bt, positions_bt, segment_ids_bt, cache=None, return_hidden=False):
    """Logits (B, T, V) in float32, and the new cache (None without one).

    With ``return_hidden=True`` the first output is the final-norm hidden state (B, T, D)
    instead of the logits (reward heads read it).

    Args:
      tokens_bt: (B, T) int token ids.
      positions_bt: (B, T) int positions (for RoPE).
      segment_ids_bt: (B, T) int; 0 = padding, equal ids attend to each other.
      cache: optional dict from ``init_cache``; the T new tokens are written at
        ``cache["index"]`` and may attend to every earlier non-padding slot.
    """
    dtype = jnp.dtype(self.cfg.dtype)
    x = jnp.take(self.embed[...], tokens_bt, axis=0).astype(dtype)                  # (B, T, D)
    if cache is None:
      mask = causal_segment_mask(segment_ids_bt)
      index, seg = None, None
    else:
      index = cache["index"]
      seg = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids_bt, index,
                                                axis=1)
      mask = cache_mask(seg, index, tokens_bt.shape[1])
    new_k, new_v = [], []
    for i, block in enumerate(self.blocks):
      layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
      x, c = block(x, positions_bt, mask, layer_cache, index)
      if c is not None:
        new_k.append(c[0])
        new_v.append(c[1])
    x = self.final_norm(x)
    if return_hidden:
      return x, None
    w = self.embed[...].T if self.cfg.tie_embeddings else self.unembed[...]
    logits = (x @ w.astype(dtype)).astype(jnp.float32)                              # (B, T, V)
    if cache is None:
      return logits, None
    new_cache = {"k": jnp.stack(new_k), "v": jnp.stack(new_v), "segment_ids": seg,
                 "index": index + tokens_bt.shape[1]}
    return logits, new_cache


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None):
  """An empty KV cache: k, v of shape (L, B, S, G, K), segment ids (B, S), write index 0."""
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
          "segment_ids": jnp.zeros((batch, length), jnp.int32), "index": jnp.int32(0)}
