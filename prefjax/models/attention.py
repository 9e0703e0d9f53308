"""Grouped-query causal self-attention with segment/padding masking and a functional KV cache.

Masking rule (training, no cache): query q may attend to key k iff
  k <= q  and  segment[k] == segment[q]  and  segment[k] != 0
  [and (branch[k] == 0 or branch[k] == branch[q])   with prefix-shared rows],
where segment id 0 marks padding. Packed sequences get distinct segment ids. In a
prefix-shared row [prompt | r1 | r2 ...] (prefjax/data/layout.py) the prompt has branch 0
and response j branch j, so each response sees the prompt and itself only.

Kernels (``select_kernel``): "dense" computes the (B, G, R, T, S) scores with einsums (CPU,
TPU, softcapped Gemma 2, float32); "cudnn" calls ``jax.nn.dot_product_attention`` (cuDNN
flash attention, no T x T scores per head) on GPU in bfloat16/float16; "blockwise" is flash
attention in plain JAX (``ModelConfig.attention_kernel="blockwise"``): an online softmax over
key blocks under ``lax.scan``, whose scores and probabilities are never larger than
(B, H, block, block), forward or backward, so attention memory grows linearly in T (the
boolean mask, one byte per (query, key) shared by every layer and head, is the only T x S
array). All take the same boolean mask; ``attend`` is the one entry point.

With a cache (generation), keys live in a fixed buffer of length S; a query written at
buffer slot ``index + t`` may attend to slot s iff s <= index + t and the slot's segment
id is non-zero (left padding of prompts has segment 0).

Sliding-window layers (Mistral, Gemma 2/3) additionally require q - k < W in buffer/row
index (as transformers' ``sliding_window_overlay``); the cache keeps every slot and the
window is a mask, so generation needs no special path.
"""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax import sharding
from prefjax.models.layers import RMSNorm, acc_dtype, param, rope, rope_inv_freq, weight

# Without a KV cache the mask is causal: the dense kernel then runs query blocks of this many
# rows against keys up to each block's end (1.6x faster forward at T = 1024 on CPU); 0 = off.
CAUSAL_BLOCK = 256
_NEG = -1e30  # finite "minus infinity": a fully masked row stays finite (it is never read).


def causal_segment_mask(segment_ids_bt, branch_ids_bt=None):
  """(B, 1, T, T) boolean mask for training-time attention (see the module docstring)."""
  t = segment_ids_bt.shape[1]
  causal = jnp.tril(jnp.ones((t, t), dtype=bool))
  same = segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
  valid_key = (segment_ids_bt != 0)[:, None, :]
  mask = causal[None] & same & valid_key                                            # (B, T, T)
  if branch_ids_bt is not None:
    key_branch = branch_ids_bt[:, None, :]
    mask = mask & ((key_branch == 0) | (key_branch == branch_ids_bt[:, :, None]))
  return mask[:, None]                                                              # (B, 1, T, T)


KERNELS = ("dense", "blockwise", "cudnn", "xla")
# Queries and keys per block of the blockwise kernel.
BLOCKWISE_BLOCK = 512


def select_kernel(backend: str, dtype, *, softcap=None, head_dim: int = 64) -> str:
  """"cudnn" where cuDNN flash attention applies (GPU, 16-bit, no softcap), else "dense"."""
  ok = (backend == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        and softcap is None and head_dim % 8 == 0 and head_dim <= 128)
  return "cudnn" if ok else "dense"


def attend(q_bthk, k_bsgk, v_bsgk, mask_b1ts, *, scale: float, softcap=None,
           kernel: str = "dense", causal_block: int = 0):
  """softmax(softcap(scale * q k^T) masked) v with grouped-query heads; (B, T, H, K).

  ``kernel``: "dense" (einsum scores), "xla" or "cudnn" (``jax.nn.dot_product_attention``
  with that implementation; "xla" exists to test this glue on CPU). Softcapping needs
  "dense". In the kernel paths every query also sees itself, so padding queries (whose
  mask row is empty) stay finite; real queries already see themselves. ``causal_block`` > 0
  declares the mask causal (query i never sees a key after slot i, true without a KV cache):
  the dense kernel then skips the all-masked key blocks above the diagonal, the others pass
  ``is_causal`` (cuDNN skips those blocks too).
  """
  b, t, h, hd = q_bthk.shape
  g = k_bsgk.shape[2]
  dtype = q_bthk.dtype
  if kernel == "dense" and causal_block and t == k_bsgk.shape[1] and t > causal_block:
    # Causal mask (no cache): query block i only needs keys [0, end of block i). Skipping
    # the all-masked upper blocks saves ~(1 - (n+1)/2n) of the score work and keeps each
    # block's scores small; every row's softmax sees the same unmasked keys as the full one.
    outs = []
    for lo in range(0, t, causal_block):
      hi = min(lo + causal_block, t)
      outs.append(attend(q_bthk[:, lo:hi], k_bsgk[:, :hi], v_bsgk[:, :hi],
                         mask_b1ts[:, :, lo:hi, :hi], scale=scale, softcap=softcap,
                         kernel="dense"))
    return jnp.concatenate(outs, axis=1)
  if kernel == "dense":
    return _dense(q_bthk, k_bsgk, v_bsgk, mask_b1ts, scale, softcap)
  if kernel == "blockwise":
    causal = bool(causal_block) and t == k_bsgk.shape[1]
    return blockwise_attention(q_bthk, k_bsgk, v_bsgk, mask_b1ts, scale=scale, softcap=softcap,
                               causal=causal)
  if softcap is not None:
    raise ValueError("attention softcapping needs the dense kernel")
  s = k_bsgk.shape[1]
  diag = (jnp.arange(t)[:, None] == jnp.arange(s)[None, :]) if t == s else False
  mask = mask_b1ts | diag
  # A causal mask also declared as such lets cuDNN skip the blocks above the diagonal (the
  # boolean mask, a subset of it, still applies); the mask carries no gradient, so cuDNN is
  # not asked for one (jax would otherwise compute a (B, 1, T, S) bias gradient per call).
  with _no_mask_gradient(kernel == "cudnn"):
    return jax.nn.dot_product_attention(q_bthk, k_bsgk, v_bsgk, mask=mask, scale=scale,
                                        is_causal=bool(causal_block) and t == s,
                                        implementation=kernel)


@contextlib.contextmanager
def _no_mask_gradient(active: bool):
  """While tracing a cuDNN attention call: no bias gradient for the (boolean) mask.

  jax turns the mask into an additive bias and, as of jax 0.10-0.11, always asks cuDNN for
  that bias's gradient (``should_export_dbias`` returns True); a mask built from segment
  ids is not differentiated, so that output is pure waste. The hook is private: where it is
  missing this does nothing and jax's default applies.
  """
  try:
    from jax._src.cudnn import fused_attention_stablehlo as fa
  except ImportError:
    fa = None
  if not active or fa is None or not hasattr(fa, "should_export_dbias"):
    yield
    return
  saved = fa.should_export_dbias
  fa.should_export_dbias = lambda *args, **kwargs: False
  try:
    yield
  finally:
    fa.should_export_dbias = saved


def _scores(q_btgrk, k_bsgk, mask_b1ts, scale, softcap):
  """(raw scale * q k^T, the softcapped and masked scores), both (B, G, R, T, S), float32+."""
  raw = jnp.einsum("btgrk,bsgk->bgrts", q_btgrk, k_bsgk).astype(acc_dtype(q_btgrk.dtype)) * scale
  s = raw if softcap is None else softcap * jnp.tanh(raw / softcap)
  return raw, jnp.where(mask_b1ts[:, :, None], s, _NEG)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _dense(q_bthk, k_bsgk, v_bsgk, mask_b1ts, scale, softcap):
  """The dense kernel. Its VJP keeps only q, k, v and the softmax row max and sum, and
  recomputes the (T, S) probabilities in the backward pass (as flash attention does): the
  autodiff of the plain formula keeps the scores and probabilities of every layer alive
  until the backward pass (3 x H x T x S floats per layer: 3.4 GiB for one 1024-token row of
  SmolLM2-135M), this one holds them for one layer at a time."""
  return _dense_fwd(q_bthk, k_bsgk, v_bsgk, mask_b1ts, scale, softcap)[0]


def _dense_fwd(q_bthk, k_bsgk, v_bsgk, mask_b1ts, scale, softcap):
  b, t, h, hd = q_bthk.shape
  g = k_bsgk.shape[2]
  _, s = _scores(q_bthk.reshape(b, t, g, h // g, hd), k_bsgk, mask_b1ts, scale, softcap)
  row_max = jnp.max(s, axis=-1, keepdims=True)
  e = jnp.exp(s - row_max)
  row_sum = jnp.sum(e, axis=-1, keepdims=True)
  probs = (e / row_sum).astype(q_bthk.dtype)
  out = jnp.einsum("bgrts,bsgk->btgrk", probs, v_bsgk).reshape(b, t, h, hd)
  return out, (q_bthk, k_bsgk, v_bsgk, mask_b1ts, row_max, row_sum)


def _dense_bwd(scale, softcap, res, dout_bthk):
  # The barrier keeps XLA from merging the recomputed scores with the forward pass's (common
  # subexpressions), which would keep every layer's scores alive until its backward step
  # (tests/models/test_attention_kernels.py fails without it); as jax.checkpoint does.
  (q_bthk, k_bsgk, v_bsgk, mask_b1ts, row_max, row_sum), dout_bthk = jax.lax.optimization_barrier(
      (res, dout_bthk))
  b, t, h, hd = q_bthk.shape
  g = k_bsgk.shape[2]
  dtype = q_bthk.dtype
  q = q_bthk.reshape(b, t, g, h // g, hd)
  do = dout_bthk.reshape(b, t, g, h // g, hd)
  raw, s = _scores(q, k_bsgk, mask_b1ts, scale, softcap)
  p = jnp.exp(s - row_max) / row_sum                                                # (B, G, R, T, S)
  dv = jnp.einsum("bgrts,btgrk->bsgk", p.astype(dtype), do)
  dp = jnp.einsum("btgrk,bsgk->bgrts", do, v_bsgk).astype(p.dtype)
  ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))                           # softmax VJP
  if softcap is not None:
    ds = ds * (1.0 - jnp.square(jnp.tanh(raw / softcap)))
  ds = (jnp.where(mask_b1ts[:, :, None], ds, 0.0) * scale).astype(dtype)
  dq = jnp.einsum("bgrts,bsgk->btgrk", ds, k_bsgk).reshape(b, t, h, hd)
  dk = jnp.einsum("bgrts,btgrk->bsgk", ds, q)
  return (dq.astype(q_bthk.dtype), dk.astype(k_bsgk.dtype), dv.astype(v_bsgk.dtype), None)


_dense.defvjp(_dense_fwd, _dense_bwd)


# ---------------------------------------------------------------------------------------------
# Blockwise (flash) attention: the online softmax of Milakov & Gimelshein, "Online normalizer
# calculation for softmax" (arXiv:1805.02867), blocked as in Dao et al., "FlashAttention"
# (arXiv:2205.14135) and Dao, "FlashAttention-2" (arXiv:2307.08691).

def blockwise_attention(q_bthk, k_bsgk, v_bsgk, mask_b1ts, *, scale: float, softcap=None,
                        causal: bool = False, block: int = BLOCKWISE_BLOCK):
  """softmax(softcap(scale * q k^T) masked) v, one (query block, key block) at a time.

  For each query block the keys are visited in blocks under ``lax.scan`` with a running row
  max m, sum l and output accumulator (the online softmax); ``causal`` (query i never sees a
  key after slot i, and T == S) stops at the query block's diagonal, skipping the blocks
  above it. The custom VJP keeps q, k, v, the mask, the output and the row log-sum-exp, and
  recomputes each block's probabilities in the backward pass (FlashAttention-2's
  backward). A query whose mask row is empty (padding) gets output 0.

  Args:
    q_bthk: [B, T, H, K] queries; k_bsgk, v_bsgk: [B, S, G, K] keys and values (H % G == 0).
    mask_b1ts: [B, 1, T, S] boolean, True where a query may see a key.
    scale: logit scale; softcap: optional cap * tanh(logits / cap).
    block: queries and keys per block (T and S are padded to a multiple of it).
  Returns:
    [B, T, H, K] in q's dtype.
  """
  b, t, h, hd = q_bthk.shape
  s = k_bsgk.shape[1]
  bq = min(block, t)
  bk = min(block, s)
  causal = causal and t == s and bq == bk
  tp, sp = -(-t // bq) * bq, -(-s // bk) * bk
  pad = lambda x, n, axis: jnp.pad(x, [(0, n - x.shape[axis]) if i == axis else (0, 0)
                                       for i in range(x.ndim)])
  q = pad(q_bthk, tp, 1)
  k, v = pad(k_bsgk, sp, 1), pad(v_bsgk, sp, 1)
  mask = pad(pad(mask_b1ts, tp, 2), sp, 3)
  out = _flash(q, k, v, mask, scale, softcap, causal, bq, bk)
  return out[:, :t]


def _key_blocks(i: int, n_k: int, causal: bool) -> int:
  """Key blocks query block ``i`` visits: up to its diagonal when causal, else all."""
  return min(i + 1, n_k) if causal else n_k


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8))
def _flash(q_bthk, k_bsgk, v_bsgk, mask_b1ts, scale, softcap, causal, bq, bk):
  return _flash_fwd(q_bthk, k_bsgk, v_bsgk, mask_b1ts, scale, softcap, causal, bq, bk)[0]


def _flash_fwd(q_bthk, k_bsgk, v_bsgk, mask_b1ts, scale, softcap, causal, bq, bk):
  b, t, h, hd = q_bthk.shape
  s, g = k_bsgk.shape[1], k_bsgk.shape[2]
  r = h // g
  acc = acc_dtype(q_bthk.dtype)
  n_q, n_k = t // bq, s // bk
  kb = k_bsgk.reshape(b, n_k, bk, g, hd).swapaxes(0, 1)                        # (Nk, B, Bk, G, K)
  vb = v_bsgk.reshape(b, n_k, bk, g, hd).swapaxes(0, 1)
  outs, lses = [], []
  for i in range(n_q):
    q = q_bthk[:, i * bq:(i + 1) * bq].reshape(b, bq, g, r, hd)                  # (B, Bq, G, R, K)
    rows = mask_b1ts[:, :, i * bq:(i + 1) * bq]                                  # (B, 1, Bq, S)
    nk = _key_blocks(i, n_k, causal)
    mb = rows[..., :nk * bk].reshape(b, 1, bq, nk, bk).transpose(3, 0, 1, 2, 4)  # (nk, B, 1, Bq, Bk)

    def body(carry, xs):
      m, l, o = carry                                   # (B, G, R, Bq), same, (B, Bq, G, R, K)
      k, v, mk = xs
      _, sc = _scores(q, k, mk, scale, softcap)                            # (B, G, R, Bq, Bk)
      m_new = jnp.maximum(m, sc.max(-1))
      p = jnp.where(mk[:, :, None], jnp.exp(sc - m_new[..., None]), 0.0)
      corr = jnp.exp(m - m_new)
      l = l * corr + p.sum(-1)
      pv = jnp.einsum("bgrqs,bsgk->bqgrk", p.astype(v.dtype), v).astype(acc)
      o = o * jnp.moveaxis(corr, 3, 1)[..., None] + pv
      return (m_new, l, o), None

    init = (jnp.full((b, g, r, bq), _NEG, acc), jnp.zeros((b, g, r, bq), acc),
            jnp.zeros((b, bq, g, r, hd), acc))
    (m, l, o), _ = jax.lax.scan(body, init, (kb[:nk], vb[:nk], mb))
    empty = l == 0.0                                    # padding queries: no key at all
    l_safe = jnp.where(empty, 1.0, l)
    outs.append((o / jnp.moveaxis(l_safe, 3, 1)[..., None]).reshape(b, bq, h, hd))
    lses.append(jnp.where(empty, 0.0, m + jnp.log(l_safe)))                      # (B, G, R, Bq)
  out = jnp.concatenate(outs, axis=1).astype(q_bthk.dtype)                      # (B, T, H, K)
  lse = jnp.concatenate(lses, axis=-1)                                           # (B, G, R, T)
  return out, (q_bthk, k_bsgk, v_bsgk, mask_b1ts, out, lse)


def _flash_bwd(scale, softcap, causal, bq, bk, res, dout_bthk):
  # As in ``_dense_bwd``: keep XLA from merging the recomputation with the forward pass.
  (q_bthk, k_bsgk, v_bsgk, mask_b1ts, out, lse), dout_bthk = jax.lax.optimization_barrier(
      (res, dout_bthk))
  b, t, h, hd = q_bthk.shape
  s, g = k_bsgk.shape[1], k_bsgk.shape[2]
  r = h // g
  dtype = q_bthk.dtype
  acc = acc_dtype(dtype)
  n_q, n_k = t // bq, s // bk
  kb = k_bsgk.reshape(b, n_k, bk, g, hd).swapaxes(0, 1)                        # (Nk, B, Bk, G, K)
  vb = v_bsgk.reshape(b, n_k, bk, g, hd).swapaxes(0, 1)
  # D_i = sum_k dO_ik O_ik = sum_j P_ij dP_ij: the softmax VJP's row term, once per query.
  delta = jnp.einsum("btgrk,btgrk->bgrt", dout_bthk.reshape(b, t, g, r, hd).astype(acc),
                     out.reshape(b, t, g, r, hd).astype(acc))                    # (B, G, R, T)
  dk = jnp.zeros((n_k, b, bk, g, hd), acc)
  dv = jnp.zeros((n_k, b, bk, g, hd), acc)
  dqs = []
  for i in range(n_q):
    sl = slice(i * bq, (i + 1) * bq)
    q = q_bthk[:, sl].reshape(b, bq, g, r, hd)
    do = dout_bthk[:, sl].reshape(b, bq, g, r, hd)
    lse_i, delta_i = lse[..., sl], delta[..., sl]                                # (B, G, R, Bq)
    nk = _key_blocks(i, n_k, causal)
    mb = mask_b1ts[:, :, sl, :nk * bk].reshape(b, 1, bq, nk, bk).transpose(3, 0, 1, 2, 4)

    def body(dq, xs):
      k, v, mk = xs
      raw, sc = _scores(q, k, mk, scale, softcap)                          # (B, G, R, Bq, Bk)
      p = jnp.where(mk[:, :, None], jnp.exp(sc - lse_i[..., None]), 0.0)
      dv_j = jnp.einsum("bgrqs,bqgrk->bsgk", p.astype(dtype), do).astype(acc)
      dp = jnp.einsum("bqgrk,bsgk->bgrqs", do, v).astype(acc)
      ds = p * (dp - delta_i[..., None])
      if softcap is not None:
        ds = ds * (1.0 - jnp.square(jnp.tanh(raw / softcap)))
      ds = (ds * scale).astype(dtype)
      dq = dq + jnp.einsum("bgrqs,bsgk->bqgrk", ds, k).astype(acc)
      dk_j = jnp.einsum("bgrqs,bqgrk->bsgk", ds, q).astype(acc)
      return dq, (dk_j, dv_j)

    dq, (dk_i, dv_i) = jax.lax.scan(body, jnp.zeros((b, bq, g, r, hd), acc),
                                    (kb[:nk], vb[:nk], mb))
    dk = dk.at[:nk].add(dk_i)
    dv = dv.at[:nk].add(dv_i)
    dqs.append(dq.reshape(b, bq, h, hd))
  dq = jnp.concatenate(dqs, axis=1)
  dk = dk.swapaxes(0, 1).reshape(b, s, g, hd)
  dv = dv.swapaxes(0, 1).reshape(b, s, g, hd)
  return dq.astype(dtype), dk.astype(k_bsgk.dtype), dv.astype(v_bsgk.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)


def sliding_window_mask(mask_b1ts, window: int, index=0, positions_bt=None):
  """Restricts a (B, 1, T, S) mask to keys within ``window`` of the query's slot, or, with
  ``positions_bt`` (no cache: T == S), within ``window`` positions: prefix-shared rows
  (prefjax/data/layout.py) place a branch's tokens further from the prompt in slots than in
  positions, and positions are what the plain row sees."""
  if positions_bt is not None:
    near = positions_bt[:, :, None] - positions_bt[:, None, :] < window             # (B, T, S)
    return mask_b1ts & near[:, None]
  t, s = mask_b1ts.shape[-2:]
  q_slot = index + jnp.arange(t)[:, None]                                           # (T, 1)
  near = q_slot - jnp.arange(s)[None, :] < window                                   # (T, S)
  return mask_b1ts & near[None, None]


def cache_mask(cache_segment_ids_bs, index, t):
  """(B, 1, T, S) mask for T new queries written at slots index..index+T-1."""
  s = cache_segment_ids_bs.shape[1]
  q_slot = index + jnp.arange(t)[:, None]                                           # (T, 1)
  causal = jnp.arange(s)[None, :] <= q_slot                                         # (T, S)
  return (causal[None] & (cache_segment_ids_bs != 0)[:, None, :])[:, None]


class Attention(nnx.Module):
  """softmax(softcap(scale * q k^T) + mask) v with optional biases, QK-norm and RoPE.

  ``sliding`` selects the local RoPE base (``cfg.rope_theta_local``) of Gemma 3.
  """

  def __init__(self, cfg, rngs: nnx.Rngs, sliding: bool = False):
    d, h, kv, hd = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pd = jnp.dtype(cfg.param_dtype)
    self.n_heads, self.n_kv_heads, self.head_dim = h, kv, hd
    self.use_rope = cfg.pos_emb == "rope"
    local = sliding and cfg.rope_theta_local is not None
    self.rope_theta = cfg.rope_theta_local if local else cfg.rope_theta
    # A tuple (hashable, static): the inverse frequencies with any rope scaling applied.
    self.inv_freq = tuple(float(f) for f in rope_inv_freq(
        hd, self.rope_theta, None if local else cfg.rope_scaling))
    self.logit_scale = cfg.query_scale if cfg.query_scale is not None else hd ** -0.5
    self.softcap = cfg.attn_softcap
    # None: ``select_kernel`` at trace time; a name of ``KERNELS`` forces that kernel.
    self.kernel = getattr(cfg, "attention_kernel", None)
    self.q = param(rngs, (d, h, hd), ("embed", "heads", "head_dim"), dtype=pd)
    self.k = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dtype=pd)
    self.v = param(rngs, (d, kv, hd), ("embed", "kv_heads", "head_dim"), dtype=pd)
    self.o = param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), dtype=pd,
                   scale=(h * hd) ** -0.5)
    self.qkv_bias, self.out_bias = cfg.qkv_bias, cfg.out_bias
    if cfg.qkv_bias:
      self.q_bias = param(rngs, (h, hd), ("heads", "head_dim"), init="zeros", dtype=pd)
      self.k_bias = param(rngs, (kv, hd), ("kv_heads", "head_dim"), init="zeros", dtype=pd)
      self.v_bias = param(rngs, (kv, hd), ("kv_heads", "head_dim"), init="zeros", dtype=pd)
    if cfg.out_bias:
      self.o_bias = param(rngs, (d,), ("embed",), init="zeros", dtype=pd)
    self.qk_norm = cfg.qk_norm
    if cfg.qk_norm:
      self.q_norm = RMSNorm(hd, cfg.norm_eps, rngs, pd, offset=cfg.norm_offset)
      self.k_norm = RMSNorm(hd, cfg.norm_eps, rngs, pd, offset=cfg.norm_offset)

  def __call__(self, x_btd, positions_bt, mask_b1ts, kv_cache=None, cache_index=None):
    """Returns (output (B, T, D), updated (k, v) cache or None)."""
    # Batch-sharded activations in and out (a no-op without a mesh in context): see
    # prefjax/sharding.py, ``constrain``.
    x_btd = sharding.constrain(x_btd, ("batch", None, None))
    dtype = x_btd.dtype
    q = jnp.einsum("btd,dhk->bthk", x_btd, weight(self.q, dtype))                # (B, T, H, K)
    k = jnp.einsum("btd,dhk->bthk", x_btd, weight(self.k, dtype))                # (B, T, G, K)
    v = jnp.einsum("btd,dhk->bthk", x_btd, weight(self.v, dtype))
    if self.qkv_bias:
      q = q + self.q_bias[...].astype(dtype)
      k = k + self.k_bias[...].astype(dtype)
      v = v + self.v_bias[...].astype(dtype)
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    if self.use_rope:
      inv_freq = jnp.asarray(self.inv_freq, jnp.float32)
      q = rope(q, positions_bt, self.rope_theta, inv_freq)
      k = rope(k, positions_bt, self.rope_theta, inv_freq)

    new_cache = None
    if kv_cache is not None:
      ck, cv = kv_cache                                                             # (B, S, G, K)
      ck = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), cache_index, axis=1)
      cv = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), cache_index, axis=1)
      k, v, new_cache = ck.astype(dtype), cv.astype(dtype), (ck, cv)

    kernel = self.kernel or select_kernel(jax.default_backend(), dtype, softcap=self.softcap,
                                          head_dim=self.head_dim)
    out = attend(q, k, v, mask_b1ts, scale=self.logit_scale, softcap=self.softcap,
                 kernel=kernel, causal_block=CAUSAL_BLOCK if kv_cache is None else 0)  # (B, T, H, K)
    out = jnp.einsum("bthk,hkd->btd", out, weight(self.o, dtype))                # (B, T, D)
    if self.out_bias:
      out = out + self.o_bias[...].astype(dtype)
    return sharding.constrain(out, ("batch", None, None)), new_cache
