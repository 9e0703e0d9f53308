"""The decoder-only transformer: pre-norm blocks of attention and MLP.

One configurable model for Llama, Mistral, Qwen2/3, Gemma 2/3 and GPT-2 (the switches are
fields of ``ModelConfig``); the default is Llama.

``Transformer(cfg, rngs)(tokens, positions, segment_ids)`` returns logits (B, T, V).
With ``cache=`` (see ``init_cache``) it also returns the updated cache, for generation.

Memory and compile time (``ModelConfig.remat``, ``ModelConfig.scan_layers``):
  * remat wraps each block in ``jax.checkpoint``: "block" saves nothing inside a block
    (``nothing_saveable``: the backward pass recomputes it from the block's input),
    "save_matmuls" saves the weight matmuls' outputs (``dots_with_no_batch_dims_saveable``:
    the projections are kept, attention scores and element-wise ops are recomputed).
  * scan_layers stacks the per-layer parameters inside the forward (one transient copy) and
    runs one block body under ``jax.lax.scan``, so the traced program (and compile time)
    does not grow with depth; the stored parameters keep the per-layer layout
    ``blocks.0, blocks.1, ...`` that the HF / GGUF loaders and exporters use. Blocks must
    share one structure: a model that mixes sliding and full layers with different RoPE
    bases (Gemma 3) falls back to the loop. With a KV cache the scan carries the cache's
    per-layer k/v as scanned data.
Dtypes: activations run in ``cfg.dtype`` (e.g. bfloat16) over ``cfg.param_dtype`` weights;
norms, softmax, the final norm, the output projection and the logits are float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax.models.attention import (Attention, cache_mask, causal_segment_mask,
                                      sliding_window_mask)
from prefjax.models.config import ModelConfig
from prefjax.models.layers import MLP, acc_dtype, make_norm, param

REMAT_POLICIES = {
    "block": jax.checkpoint_policies.nothing_saveable,
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _block_fn(graphdef, remat: str):
  """(block_state, x, positions, mask, kv, index) -> (x, new kv), optionally rematerialised."""

  def fn(state, x, positions, mask, kv, index):
    return nnx.merge(graphdef, state)(x, positions, mask, kv, index)

  if remat != "none":
    fn = jax.checkpoint(fn, policy=REMAT_POLICIES[remat])
  return _ordered_backward(fn)


def _after(dx, d_state):
  """``dx``, made to depend on every array of ``d_state`` (adds 0 * a finite sum of them).

  A block's weight gradients are outputs of the backward pass that nothing else reads, so
  XLA's scheduler is free to defer them to its end, keeping every block's activations and
  cotangents alive until then (measured on CPU: about 50 MB per layer per 1024 tokens of
  SmolLM2-135M, with or without remat; remat also needs XLA:CPU's memory scheduler,
  ``prefjax/xla_cpu.py``). Making the
  cotangent passed to the previous block depend on them forces each block's weight
  gradients into its own backward step. An optimization barrier does not do this (XLA
  removes barriers before it schedules); XLA does not fold ``0 * x`` for floats (NaN
  semantics), and the ``isfinite`` keeps an overflowing weight gradient from turning ``dx``
  into NaN.
  """
  total = sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in jax.tree.leaves(d_state)
              if jnp.issubdtype(leaf.dtype, jnp.inexact))
  return dx + (jnp.where(jnp.isfinite(total), total, 0.0) * 0.0).astype(dx.dtype)


def _ordered_backward(fn):
  """``fn`` (a block) with the same VJP, computed in order: see ``_after``. With a KV cache
  (generation, no backward pass) it is ``fn``."""

  @jax.custom_vjp
  def block(state, x, positions, mask, kv, index):
    return fn(state, x, positions, mask, kv, index)

  def fwd(state, x, positions, mask, kv, index):
    return jax.vjp(lambda s, h: fn(s, h, positions, mask, None, index), state, x)

  def bwd(vjp, g):
    d_state, dx = vjp(g)
    return d_state, _after(dx, d_state), None, None, None, None

  block.defvjp(fwd, bwd)

  def call(state, x, positions, mask, kv, index):
    if kv is not None:
      return fn(state, x, positions, mask, kv, index)
    return block(state, x, positions, mask, kv, index)

  return call


class Block(nnx.Module):
  """x += [post_attn_norm](attn(attn_norm(x))); x += [post_mlp_norm](mlp(mlp_norm(x)))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, sliding: bool = False):
    pd = jnp.dtype(cfg.param_dtype)
    self.sliding = sliding
    self.attn_norm = make_norm(cfg, rngs)
    self.attn = Attention(cfg, rngs, sliding=sliding)
    self.mlp_norm = make_norm(cfg, rngs)
    self.mlp = MLP(cfg.dim, cfg.mlp_dim, rngs, pd, gated=cfg.mlp == "gated", act=cfg.act,
                   bias=cfg.mlp_bias)
    self.post_norms = cfg.post_norms
    if cfg.post_norms:
      self.post_attn_norm = make_norm(cfg, rngs)
      self.post_mlp_norm = make_norm(cfg, rngs)

  def __call__(self, x, positions, mask, kv_cache=None, cache_index=None):
    h, new_cache = self.attn(self.attn_norm(x), positions, mask, kv_cache, cache_index)
    if self.post_norms:
      h = self.post_attn_norm(h)
    x = x + h
    h = self.mlp(self.mlp_norm(x))
    if self.post_norms:
      h = self.post_mlp_norm(h)
    return x + h, new_cache


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    pd = jnp.dtype(cfg.param_dtype)
    self.embed = param(rngs, (cfg.vocab_size, cfg.dim), ("vocab", "embed"), scale=1.0, dtype=pd)
    if cfg.pos_emb == "learned":
      self.pos_embed = param(rngs, (cfg.max_len, cfg.dim), (None, "embed"), scale=0.02, dtype=pd)
    self.blocks = nnx.List([Block(cfg, rngs, sliding=cfg.layer_type(i) == "sliding")
                            for i in range(cfg.n_layers)])
    self.final_norm = make_norm(cfg, rngs)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, (cfg.dim, cfg.vocab_size), ("embed", "vocab"), dtype=pd)

  def unembedding(self):
    """(W, vocab_major, final softcap or None): the output projection as stored.

    Tied models return the embedding table [V, D] itself (vocab_major=True), untied ones the
    unembedding [D, V]. ``prefjax.models.logprobs.chunked_token_logprobs`` takes these three
    to run the head a chunk of tokens at a time.
    """
    if self.cfg.tie_embeddings:
      return self.embed[...], True, self.cfg.final_softcap
    return self.unembed[...], False, self.cfg.final_softcap

  def head(self, hidden):
    """Logits [..., V] of final-norm hidden states [..., D], in float32 (float64 stays):
    ``softcap * tanh((h @ W) / softcap)`` with the final softcap (Gemma), else ``h @ W``."""
    w, vocab_major, softcap = self.unembedding()
    acc = acc_dtype(hidden.dtype)
    logits = hidden.astype(acc) @ (w.T if vocab_major else w).astype(acc)
    if softcap is not None:
      logits = softcap * jnp.tanh(logits / softcap)
    return logits

  def __call__(self, tokens_bt, positions_bt, segment_ids_bt, cache=None, return_hidden=False,
               branch_ids_bt=None):
    """Logits (B, T, V) in float32, and the new cache (None without one).

    With ``return_hidden=True`` the first output is the final-norm hidden state (B, T, D)
    instead of the logits (reward heads read it).

    Args:
      tokens_bt: (B, T) int token ids.
      positions_bt: (B, T) int positions (RoPE angles or rows of the learned table).
      segment_ids_bt: (B, T) int; 0 = padding, equal ids attend to each other.
      cache: optional dict from ``init_cache``; the T new tokens are written at
        ``cache["index"]`` and may attend to every earlier non-padding slot.
      branch_ids_bt: optional (B, T) int, prefix-shared rows (prefjax/data/layout.py):
        0 = shared prompt; a token of branch j > 0 sees branch 0 and branch j only.
    """
    dtype = jnp.dtype(self.cfg.dtype)
    cfg = self.cfg
    x = jnp.take(self.embed[...], tokens_bt, axis=0).astype(dtype)                  # (B, T, D)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.dim ** 0.5, dtype)
    if cfg.pos_emb == "learned":
      x = x + jnp.take(self.pos_embed[...], positions_bt, axis=0).astype(dtype)
    if cache is None:
      mask = causal_segment_mask(segment_ids_bt, branch_ids_bt)
      index, seg = None, None
    else:
      index = cache["index"]
      seg = jax.lax.dynamic_update_slice_in_dim(cache["segment_ids"], segment_ids_bt, index,
                                                axis=1)
      mask = cache_mask(seg, index, tokens_bt.shape[1])
    local_mask = None
    if cfg.sliding_window:
      local_mask = (sliding_window_mask(mask, cfg.sliding_window, positions_bt=positions_bt)
                    if index is None else sliding_window_mask(mask, cfg.sliding_window, index))
    x, new_kv = self._blocks(x, positions_bt, mask, local_mask, cache, index)
    # The final norm, the output projection and the logits are float32 (bf16 logits would
    # round log-probs of long completions by ~1e-2 per token).
    acc = acc_dtype(x.dtype)                     # float32 (float64 for a float64 model)
    x = self.final_norm(x.astype(acc))
    if return_hidden:
      return x, None
    logits = self.head(x)                                                           # (B, T, V)
    if cache is None:
      return logits, None
    new_cache = {"k": new_kv[0], "v": new_kv[1], "segment_ids": seg,
                 "index": index + tokens_bt.shape[1]}
    return logits, new_cache

  def _blocks(self, x, positions, mask, local_mask, cache, index):
    """Runs every block; returns (x, (k [L, ...], v [L, ...]) or None).

    A per-layer cache (tuples of L buffers, ``init_cache(per_layer=True)``) comes back as
    tuples and always takes the loop: each layer's buffer is then its own array, which a
    decode loop updates in place (a stacked [L, ...] cache is sliced and re-stacked, i.e.
    copied whole, at every step).
    """
    remat = self.cfg.remat if cache is None else "none"   # no backward pass with a cache
    splits = [nnx.split(b) for b in self.blocks]
    graphdefs = [g for g, _ in splits]
    per_layer = cache is not None and isinstance(cache["k"], (tuple, list))
    if (self.cfg.scan_layers and not per_layer
        and all(g == graphdefs[0] for g in graphdefs[1:])):
      layer_mask = local_mask if self.blocks[0].sliding else mask
      fn = _block_fn(graphdefs[0], remat)
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[s for _, s in splits])  # (L, ...)

      def body(h, xs):
        state, kv = xs
        h, new = fn(state, h, positions, layer_mask, kv, index)
        return h, new

      kv = None if cache is None else (cache["k"], cache["v"])
      x, new_kv = jax.lax.scan(body, x, (stacked, kv))
      return x, new_kv
    new_k, new_v = [], []
    for i, (g, state) in enumerate(splits):
      kv = None if cache is None else (cache["k"][i], cache["v"][i])
      layer_mask = local_mask if self.blocks[i].sliding else mask
      x, c = _block_fn(g, remat)(state, x, positions, layer_mask, kv, index)
      if c is not None:
        new_k.append(c[0])
        new_v.append(c[1])
    if not new_k:
      return x, None
    if per_layer:
      return x, (tuple(new_k), tuple(new_v))
    return x, (jnp.stack(new_k), jnp.stack(new_v))


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None, per_layer: bool = False):
  """An empty KV cache: k, v of shape (L, B, S, G, K), segment ids (B, S), write index 0.

  ``per_layer=True``: k and v are tuples of L arrays (B, S, G, K) instead, which a decode
  loop updates in place (see ``Transformer._blocks``).
  """
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, length, cfg.n_kv_heads, cfg.head_dim)
  seg = jnp.zeros((batch, length), jnp.int32)
  if per_layer:
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
  else:
    zeros = lambda: jnp.zeros((cfg.n_layers,) + shape, dtype)
  return {"k": zeros(), "v": zeros(), "segment_ids": seg, "index": jnp.int32(0)}
