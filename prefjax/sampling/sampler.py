"""Batched, jit-compiled generation with a KV cache: greedy or temperature / top-p.

Prompts are left-padded to a common length (rounded up to a bucket so few shapes compile),
prefilled in one forward pass, then decoded one token at a time in a ``lax.while_loop``
that stops when every row has emitted EOS or ``max_new_tokens`` is reached.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefjax.models.transformer import init_cache


def sample_token(logits_bv, rng, temperature: float, top_p: float):
  """Greedy when temperature == 0; else softmax(logits / T) restricted to the top-p mass."""
  if temperature == 0.0:
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
  logits = logits_bv / temperature
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    cutoff_idx = jnp.sum(mass_before < top_p, axis=-1, keepdims=True) - 1          # (B, 1)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_p",
                                             "eos_id", "pad_id"))
def _generate(graphdef, params, tokens_bp, segment_bp, rng, *, max_new_tokens, temperature,
              top_p, eos_id, pad_id):
  model = nnx.merge(graphdef, params)
  b, p = tokens_bp.shape
  positions = jnp.maximum(jnp.cumsum(segment_bp, axis=1) - 1, 0)
  cache = init_cache(model.cfg, b, p + max_new_tokens)
  logits, cache = model(tokens_bp, positions, segment_bp, cache=cache)
  rng, sub = jax.random.split(rng)
  first = sample_token(logits[:, -1], sub, temperature, top_p)
  out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first)
  done = first == eos_id
  next_pos = positions[:, -1] + 1

  def cond(carry):
    i, _, _, done, _, _, _ = carry
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    i, tok, cache, done, pos, out, rng = carry
    logits, cache = model(tok[:, None], pos[:, None], jnp.ones((b, 1), jnp.int32), cache=cache)
    rng, sub = jax.random.split(rng)
    nxt = sample_token(logits[:, -1], sub, temperature, top_p)
    nxt = jnp.where(done, pad_id, nxt)
    out = out.at[:, i].set(nxt)
    return i + 1, nxt, cache, done | (nxt == eos_id), pos + 1, out, rng

  carry = (jnp.int32(1), first, cache, done, next_pos, out, rng)
  return jax.lax.while_loop(cond, body, carry)[5]


def generate(graphdef, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             rng, temperature: float = 1.0, top_p: float = 1.0, eos_id: int, pad_id: int = 0,
             batch_size: int = 64, bucket: int = 16) -> list[list[int]]:
  """Completions (token ids, EOS included when emitted) for each prompt."""
  if not len(prompts):
    return []
  if any(len(p) == 0 for p in prompts):
    raise ValueError("generate: every prompt needs at least one token (e.g. BOS)")
  out: list[list[int]] = []
  for start in range(0, len(prompts), batch_size):
    chunk = list(prompts[start:start + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)          # fixed batch shape: one compile
    p = -(-max(len(x) for x in chunk) // bucket) * bucket
    tokens = np.full((batch_size, p), pad_id, np.int32)
    seg = np.zeros((batch_size, p), np.int32)
    for i, ids in enumerate(chunk):
      tokens[i, p - len(ids):] = ids
      seg[i, p - len(ids):] = 1
    rng, sub = jax.random.split(rng)
    res = np.asarray(_generate(graphdef, params, jnp.asarray(tokens), jnp.asarray(seg), sub,
                               max_new_tokens=max_new_tokens, temperature=float(temperature),
                               top_p=float(top_p), eos_id=eos_id, pad_id=pad_id))
    for row in res[:n]:
      ids = row.tolist()
      if eos_id in ids:            # after EOS the loop wrote padding; without EOS all is kept
        ids = ids[:ids.index(eos_id) + 1]
      out.append(ids)
  return out
