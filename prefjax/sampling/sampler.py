"""Batched, jit-compiled sampling with a KV cache: one core for generation and RL rollouts.

    tokens_bn, logps_bn, stopped_b = sample_batch(graphdef, params, tokens_bp, segment_bp, rng,
                                                  max_new_tokens=128, temperature=1.0,
                                                  top_p=1.0, top_k=0, stop_ids=(2,), pad_id=0)
    completions = generate(graphdef, params, prompts, max_new_tokens=128, rng=rng,
                           stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id)

Prompts are left-padded to a common width (``left_pad``; segment id 0 on padding, positions
counted from each row's first real token), the width rounded up by ``bucket_width`` so few
shapes compile. All prompt tokens but the last are prefilled into the KV cache, in tiles of
rows of similar length by chunks of columns that skip the left padding (``_prefill``); then
a ``lax.while_loop`` feeds one token per row (first the prompt's last token) and draws the
next, until every row has drawn a stop id or ``max_new_tokens`` were drawn. A row that
stopped keeps its stop token and is padded after it.

Shared prefixes: prompts that start with the same tokens (a system prompt, few-shot examples,
k samples of one prompt) are laid out as [prefix | padding | rest] (``left_pad(...,
prefix_len=L)``, L from ``shared_prefix_len``) and ``sample_batch(..., prefix_len=L)``
prefills the prefix once, for one row, and copies its cache to every row: the prefill costs
one prefix plus each row's rest instead of every row's whole prompt. Positions count real
tokens only, so a row reads the same as when left-padded. Copies: when the rows come in
consecutive runs of ``copies`` identical prompts (k samples of each prompt;
``prompt_copies``), one row of each run is prefilled and its cache copied to the others.

Each drawn token also comes with its log-probability under the policy,
``log_softmax(logits)[token]`` of the unmodified float32 logits (not the temperature / top-k /
top-p distribution it was drawn from): the value a trainer recomputes with one full forward
(``prefjax.models.logprobs.token_logprobs``), up to cache-vs-full-forward rounding.

Speed: the cache is one buffer per layer (``init_cache(per_layer=True)``), updated in place
inside the loop; the outputs are written one column per step in place; the prefill's unused
logits are never computed (XLA removes them); a draw needs one random number per row
(``_categorical``), and top-p looks for its nucleus among the most likely tokens before it
would sort the vocabulary.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefjax.models.logprobs import token_logprobs
from prefjax.models.transformer import init_cache


# ----------------------------------------------------------------------------- drawing
# top-p without top-k first looks for the nucleus among this many most likely tokens (a
# partial sort); only when they hold less than top_p of the mass does it sort the vocabulary.
NUCLEUS_CANDIDATES = 256
_BLOCK = 128


def _categorical(rng, logits_bk):
  """[B] indices drawn with probability softmax(logits_bk) (-inf: never), int32.

  Inverse CDF of one uniform per row over the unnormalised probabilities, summed in blocks
  of 128 (a block is found from the block sums, then the index inside it), so a draw over a
  whole vocabulary costs one exp per logit and [B] random numbers (Gumbel-max, as
  ``jax.random.categorical``, needs [B, V] of them). The index found is the first whose
  cumulative mass reaches the uniform, so an entry of zero probability is never drawn.
  """
  b, k = logits_bk.shape
  e_bk = jnp.exp(logits_bk - jnp.max(logits_bk, axis=-1, keepdims=True))            # in [0, 1]
  nb = -(-k // _BLOCK)
  e_bnc = jnp.pad(e_bk, ((0, 0), (0, nb * _BLOCK - k))).reshape(b, nb, _BLOCK)
  csum_bn = jnp.cumsum(jnp.sum(e_bnc, axis=-1), axis=-1)
  u_b = 1.0 - jax.random.uniform(rng, (b,), jnp.float32)                           # (0, 1]
  target_b = u_b * csum_bn[:, -1]
  j_b = jnp.argmax(csum_bn >= target_b[:, None], axis=-1)                          # the block
  upto_b = jnp.take_along_axis(csum_bn, j_b[:, None], axis=-1)[:, 0]
  before_b = jnp.where(j_b > 0, jnp.take_along_axis(csum_bn, jnp.maximum(j_b - 1, 0)[:, None],
                                                    axis=-1)[:, 0], 0.0)
  inner_bc = jnp.cumsum(jnp.take_along_axis(e_bnc, j_b[:, None, None], axis=1)[:, 0], axis=-1)
  # The target's place inside the block, rescaled to the block's own cumulative sum (the two
  # sums of one block may differ in the last bit).
  t_b = (target_b - before_b) / (upto_b - before_b) * inner_bc[:, -1]
  i_b = jnp.argmax(inner_bc >= t_b[:, None], axis=-1)
  return (j_b * _BLOCK + i_b).astype(jnp.int32)


def _nucleus(sorted_logits_bk, top_p: float, lse_b1=None):
  """Sorted (descending) logits with everything past the top-p mass set to -inf.

  Keeps the smallest prefix whose probability reaches ``top_p`` (at least one token): token
  j stays iff the mass strictly before it is < top_p. Probabilities are normalised over the
  given logits, or by ``lse_b1`` (the log-normaliser of a larger set they were taken from).
  """
  if lse_b1 is None:
    lse_b1 = jax.nn.logsumexp(sorted_logits_bk, axis=-1, keepdims=True)
  probs = jnp.exp(sorted_logits_bk - lse_b1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = (mass_before < top_p).at[:, 0].set(True)
  return jnp.where(keep, sorted_logits_bk, -jnp.inf)


def _top_p(logits_bv, rng, top_p: float):
  """A draw from the top-p nucleus of the whole vocabulary [B] (0 < top_p < 1).

  The nucleus is looked for among the ``NUCLEUS_CANDIDATES`` most likely tokens (a partial
  sort); if they hold less than top_p of some row's mass, the cut is found by bisection on
  the logit instead (no sort of the vocabulary): token i is kept iff the mass of the tokens
  more likely than it is < top_p, the same set as the sorted prefix of ``_nucleus``.
  """
  v = logits_bv.shape[-1]
  vals_bk, idx_bk = jax.lax.top_k(logits_bv, min(NUCLEUS_CANDIDATES, v))           # descending
  lse_b1 = jax.nn.logsumexp(logits_bv, axis=-1, keepdims=True)

  def among_candidates():
    kept = _nucleus(vals_bk, top_p, lse_b1)
    return jnp.take_along_axis(idx_bk, _categorical(rng, kept)[:, None], axis=-1)[:, 0]

  def bisection():
    probs_bv = jnp.exp(logits_bv - lse_b1)

    def halve(_, bounds):     # invariant: mass(> hi) < top_p <= mass(> lo)
      lo, hi = bounds
      mid = 0.5 * (lo + hi)
      below = jnp.sum(jnp.where(logits_bv > mid, probs_bv, 0.0), -1, keepdims=True) < top_p
      return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

    lo = jnp.min(jnp.where(logits_bv > -jnp.inf, logits_bv, jnp.inf), -1, keepdims=True) - 1.0
    _, hi = jax.lax.fori_loop(0, 40, halve, (lo, vals_bk[:, :1]))
    return _categorical(rng, jnp.where(logits_bv >= hi, logits_bv, -jnp.inf))

  covered = jnp.all(jnp.sum(jnp.exp(vals_bk - lse_b1), axis=-1) >= top_p)
  return jax.lax.cond(covered, among_candidates, bisection).astype(jnp.int32)


def _argmax(logits_bv):
  """argmax over the last axis [B] (first of ties): a max and a min, which XLA:CPU runs
  several times faster than its (value, index) argmax reduction over a vocabulary."""
  v = logits_bv.shape[-1]
  top_b1 = jnp.max(logits_bv, axis=-1, keepdims=True)
  iota = jax.lax.broadcasted_iota(jnp.int32, logits_bv.shape, 1)
  return jnp.minimum(jnp.min(jnp.where(logits_bv == top_b1, iota, v), axis=-1), v - 1)


def sample_token(logits_bv, rng, temperature: float, top_p: float, top_k: int = 0):
  """One token id per row [B]: greedy when temperature == 0 (or top_k == 1), else a draw
  from softmax(logits / temperature) restricted to the top_k most likely tokens (0 = all)
  and then to the smallest set of them holding top_p of the (renormalised) mass.

  Args:
    logits_bv: [B, V] logits.
    rng: a PRNG key (unused when greedy).
    temperature, top_p, top_k: Python numbers (they select the program).
  Returns:
    [B] int32 token ids.
  """
  if temperature == 0.0 or top_k == 1 or top_p <= 0.0:
    return _argmax(logits_bv)
  logits = logits_bv.astype(jnp.float32) / temperature
  if 0 < top_k < logits.shape[-1]:
    # Draw among the k candidates only: no [B, V] sort.
    vals_bk, idx_bk = jax.lax.top_k(logits, top_k)                                # descending
    if top_p < 1.0:
      vals_bk = _nucleus(vals_bk, top_p)
    choice = _categorical(rng, vals_bk)
    return jnp.take_along_axis(idx_bk, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
  if top_p < 1.0:
    return _top_p(logits, rng, top_p)
  return _categorical(rng, logits)


# ----------------------------------------------------------------------------- the core
# Prefill tiles: rows x columns of the prompt grid run together (see ``_prefill``).
PREFILL_ROWS = 8
PREFILL_CHUNK = 32
@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature",
                                             "top_p", "top_k", "stop_ids", "pad_id",
                                             "prefill_rows", "prefill_chunk", "prefix_len",
                                             "copies"))
def sample_batch(graphdef, params, tokens_bp, segment_bp, rng, *, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 stop_ids: tuple = (), pad_id: int = 0, prefill_rows: int = PREFILL_ROWS,
                 prefill_chunk: int = PREFILL_CHUNK, prefix_len: int = 0, copies: int = 1):
  """Draws up to ``max_new_tokens`` tokens per left-padded prompt row, with a KV cache.

  Args:
    graphdef, params: a prefjax ``Transformer`` (``nnx.split``; params as a pure dict).
    tokens_bp: [B, P] int prompt ids, left-padded (``left_pad``); every row holds >= 1 token.
      With ``prefix_len`` = L > 0, columns [0, L) hold a prefix every row shares (all real
      tokens) and the rest of each prompt (>= 1 token) is left-padded in columns [L, P).
    segment_bp: [B, P] int, 1 on prompt tokens and 0 on padding.
    rng: a PRNG key; step i draws with ``fold_in(rng, i)``, so results depend on rng only.
    max_new_tokens: N, the most tokens drawn per row.
    temperature, top_p, top_k: see ``sample_token`` (temperature 0: greedy).
    stop_ids: a row stops after drawing any of these (the stop token is kept).
    pad_id: written after a row's stop token.
    prefill_rows, prefill_chunk: the prefill's tile (see ``_prefill``).
    prefix_len: L, the shared prefix's width (0: none); it is prefilled once, for one row.
    copies: rows [c * copies, (c + 1) * copies) hold the same prompt, for every c (B is a
      multiple of it); each prompt is prefilled once.
  Returns:
    tokens [B, N] int32 (pad_id after the stop), logps [B, N] float32 (log_softmax of the
    unmodified logits at each drawn token; 0 after the stop), stopped [B] bool (the row drew
    a stop id).
  """
  model = nnx.merge(graphdef, params)
  b, p = tokens_bp.shape
  n = max_new_tokens
  segment_bp = segment_bp.astype(jnp.int32)
  if copies < 1 or b % copies:
    raise ValueError(f"sample_batch: copies={copies} must divide the batch of {b} rows")
  if not 0 <= prefix_len < p:
    raise ValueError(f"sample_batch: prefix_len={prefix_len} must be in [0, {p}) (the prompt "
                     f"width): every row needs a token after the shared prefix")
  window = model.cfg.sliding_window
  if prefix_len and window and p + prefill_chunk + n > window:
    # Sliding-window attention measures distance in cache slots: the padding between the
    # prefix and the rest would widen it, so the prefix moves back next to its row's rest.
    tokens_bp, segment_bp = _join_prefix(tokens_bp, segment_bp, prefix_len, pad_id)
    prefix_len = 0
  positions_bp = jnp.maximum(jnp.cumsum(segment_bp, axis=1) - 1, 0)
  # Rows longest first, so that the prefill's row groups hold prompts of similar lengths;
  # the outputs are put back in the caller's order at the end. The sort is stable, so runs
  # of copies stay together and start at multiples of ``copies``.
  order_b = jnp.argsort(-jnp.sum(segment_bp, axis=1), stable=True)
  tokens_bp, segment_bp, positions_bp = (x[order_b] for x in (tokens_bp, segment_bp,
                                                              positions_bp))
  # Slots: the prompt but its last token, then the n tokens the loop feeds (the prompt's last
  # token and every drawn token but the last, which is never fed back).
  cache = _prefill(model, tokens_bp[::copies, :-1], positions_bp[::copies, :-1],
                   segment_bp[::copies, :-1], extra_slots=n, rows=prefill_rows,
                   chunk=prefill_chunk, prefix=prefix_len)
  if copies > 1:
    rep = lambda x: jnp.repeat(x, copies, axis=0)
    cache = {"k": tuple(map(rep, cache["k"])), "v": tuple(map(rep, cache["v"])),
             "segment_ids": rep(cache["segment_ids"]), "index": cache["index"]}
  stops = jnp.asarray(stop_ids or (-1,), jnp.int32)
  ones_b1 = jnp.ones((b, 1), jnp.int32)

  def cond(c):
    i, done_b = c[0], c[4]
    return (i < n) & ~jnp.all(done_b)

  def body(c):
    i, tok_b, pos_b, cache, done_b, out_bn, logp_bn = c
    logits_b1v, cache = model(tok_b[:, None], pos_b[:, None], ones_b1, cache=cache)
    logits_bv = logits_b1v[:, 0]
    nxt_b = sample_token(logits_bv, jax.random.fold_in(rng, i), temperature, top_p, top_k)
    logp_b = token_logprobs(logits_bv[:, None], nxt_b[:, None])[:, 0]
    nxt_b = jnp.where(done_b, pad_id, nxt_b)
    logp_b = jnp.where(done_b, 0.0, logp_b)
    out_bn = jax.lax.dynamic_update_slice(out_bn, nxt_b[:, None], (0, i))
    logp_bn = jax.lax.dynamic_update_slice(logp_bn, logp_b[:, None], (0, i))
    done_b = done_b | jnp.any(nxt_b[:, None] == stops[None, :], axis=-1)
    return i + 1, nxt_b, pos_b + 1, cache, done_b, out_bn, logp_bn

  carry = (jnp.int32(0), tokens_bp[:, -1].astype(jnp.int32), positions_bp[:, -1], cache,
           jnp.zeros((b,), bool), jnp.full((b, n), pad_id, jnp.int32),
           jnp.zeros((b, n), jnp.float32))
  _, _, _, _, stopped_b, out_bn, logp_bn = jax.lax.while_loop(cond, body, carry)
  back_b = jnp.argsort(order_b)
  return out_bn[back_b], logp_bn[back_b], stopped_b[back_b]


def _join_prefix(tokens_bp, segment_bp, prefix_len: int, pad_id: int):
  """[prefix | padding | rest] rows back to plain left padding [padding | prefix | rest]."""
  p = tokens_bp.shape[1]
  gap_b1 = p - prefix_len - jnp.sum(segment_bp[:, prefix_len:], axis=1, keepdims=True)
  col = jnp.arange(p)[None, :]
  src = jnp.where(col >= prefix_len + gap_b1, col, col - gap_b1)
  keep = src >= 0
  src = jnp.maximum(src, 0)
  tokens = jnp.where(keep, jnp.take_along_axis(tokens_bp, src, axis=1), pad_id)
  return tokens, jnp.where(keep, jnp.take_along_axis(segment_bp, src, axis=1), 0)


def _prefill(model, tokens_bt, positions_bt, segment_bt, *, extra_slots: int, rows: int,
             chunk: int, prefix: int = 0):
  """A per-layer KV cache holding the given (left-padded) tokens, then ``extra_slots`` free
  slots; its write index points at the first free slot.

  Left padding wastes most of a prefill when prompt lengths differ (a batch is as wide as
  its longest prompt). The [B, T] grid is cut into tiles of ``rows`` rows by ``chunk``
  columns (rows sorted by length, longest first, by the caller) and a tile runs only if it
  holds a real token: each row group fills its cache chunk by chunk, left to right, every
  chunk attending to the group's earlier slots (the model's cached path). When T is not a
  multiple of the chunk width, the cache starts with up to chunk - 1 empty (masked) slots.

  ``prefix`` > 0: columns [0, prefix) are the same real tokens in every row. They are run
  once, for the first row, into slots [0, prefix) of every row's cache; the tiles then cover
  the remaining columns, after up to chunk - 1 empty slots.
  """
  b, t = tokens_bt.shape
  rest = t - prefix
  chunk = max(1, min(chunk, rest))
  lead = -rest % chunk                      # empty slots before the tiles: whole chunks
  width = prefix + lead + rest
  cache = init_cache(model.cfg, b, width + extra_slots, per_layer=True)
  if prefix:
    one = init_cache(model.cfg, 1, prefix, per_layer=True)
    _, one = model(tokens_bt[:1, :prefix], positions_bt[:1, :prefix], segment_bt[:1, :prefix],
                   cache=one)
    copy = lambda x, y: jax.lax.dynamic_update_slice_in_dim(
        x, jnp.broadcast_to(y, (b,) + y.shape[1:]).astype(x.dtype), 0, axis=1)
    cache = {"k": tuple(map(copy, cache["k"], one["k"])),
             "v": tuple(map(copy, cache["v"], one["v"])),
             "segment_ids": copy(cache["segment_ids"], one["segment_ids"]),
             "index": cache["index"]}
  if rest == 0:
    return dict(cache, index=jnp.int32(width))
  pad = lambda x: jnp.pad(x[:, prefix:], ((0, 0), (lead, 0)))
  tokens_bt, positions_bt, segment_bt = pad(tokens_bt), pad(positions_bt), pad(segment_bt)
  rows = max(1, min(rows, b))
  rows_slice = lambda x, r: jax.lax.dynamic_slice_in_dim(x, r, rows, axis=0)
  cols_slice = lambda x, c: jax.lax.dynamic_slice_in_dim(x, c, chunk, axis=1)

  def group(g, cache):
    # The last group ends at the last row (it may share rows with the one before, which it
    # then recomputes and rewrites whole).
    r = jnp.minimum(g * rows, b - rows)
    tok, pos, seg = (rows_slice(x, r) for x in (tokens_bt, positions_bt, segment_bt))
    sub = {"k": tuple(rows_slice(x, r) for x in cache["k"]),
           "v": tuple(rows_slice(x, r) for x in cache["v"]),
           "segment_ids": rows_slice(cache["segment_ids"], r), "index": jnp.int32(0)}

    def tile(j, sub):
      c = j * chunk

      def run(sub):
        _, sub = model(cols_slice(tok, c), cols_slice(pos, c), cols_slice(seg, c),
                       cache=dict(sub, index=prefix + c))
        return sub
      return jax.lax.cond(jnp.any(cols_slice(seg, c) != 0), run, lambda sub: sub, sub)

    sub = jax.lax.fori_loop(0, (lead + rest) // chunk, tile, dict(sub, index=jnp.int32(0)))
    put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y, r, axis=0)
    return {"k": tuple(map(put, cache["k"], sub["k"])),
            "v": tuple(map(put, cache["v"], sub["v"])),
            "segment_ids": put(cache["segment_ids"], sub["segment_ids"]),
            "index": cache["index"]}

  cache = jax.lax.fori_loop(0, -(-b // rows), group, cache)
  return dict(cache, index=jnp.int32(width))


# ----------------------------------------------------------------------------- host side
def bucket_width(n: int, bucket: int = 16) -> int:
  """``n`` rounded up to a multiple of ``bucket``, and for long prompts to one of 4 widths
  per octave (steps of 2^(floor(log2 n) - 2)): at most ~25% padding, few compiled shapes.
  ``bucket`` <= 1 keeps ``n``."""
  if bucket <= 1:
    return n
  step = max(bucket, 1 << max(n.bit_length() - 3, 0))
  return -(-n // step) * step


def shared_prefix_len(prompts: Sequence[Sequence[int]], multiple: int = 16) -> int:
  """The longest prefix every prompt starts with and that leaves each prompt >= 1 more
  token, rounded down to a multiple of ``multiple`` (few compiled shapes); 0 for fewer than
  two prompts or a prefix shorter than ``multiple``."""
  if len(prompts) < 2:
    return 0
  first = np.asarray(prompts[0])
  n = min(len(x) for x in prompts) - 1
  for ids in prompts[1:]:
    if n <= 0:
      break
    same = np.asarray(ids[:n]) == first[:n]
    n = int(n if same.all() else np.argmin(same))
  multiple = max(multiple, 1)
  return max(n, 0) // multiple * multiple


def prompt_copies(prompts: Sequence[Sequence[int]]) -> int:
  """The largest c such that the prompts come in consecutive runs of c identical ones (k
  samples of each prompt: k, or a divisor of it), the ``copies`` of ``sample_batch``."""
  runs, start = [], 0
  for i in range(1, len(prompts) + 1):
    if i == len(prompts) or list(prompts[i]) != list(prompts[start]):
      runs.append(i - start)
      start = i
  return functools.reduce(math.gcd, runs, 0) or 1


def left_pad(prompts: Sequence[Sequence[int]], width: int, pad_id: int, prefix_len: int = 0):
  """(tokens [B, W], segment ids [B, W]) as np.int32: each prompt right-aligned in ``width``
  columns, pad_id / segment 0 before it.

  ``prefix_len`` = L > 0 (every prompt starts with the same L tokens and has more): the
  prefix fills columns [0, L) and the rest of each prompt is right-aligned after it, the
  layout ``sample_batch(..., prefix_len=L)`` reads."""
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  seg = np.zeros((len(prompts), width), np.int32)
  head = list(prompts[0][:prefix_len]) if prefix_len else []
  for i, ids in enumerate(prompts):
    if len(ids) > width:
      raise ValueError(f"left_pad: prompt {i} has {len(ids)} tokens, more than width {width}")
    if prefix_len:
      if len(ids) <= prefix_len or list(ids[:prefix_len]) != head:
        raise ValueError(f"left_pad: prompt {i} does not start with the shared prefix of "
                         f"{prefix_len} tokens and continue after it")
      tokens[i, :prefix_len] = head
      seg[i, :prefix_len] = 1
    if len(ids) > prefix_len:
      tokens[i, width - len(ids) + prefix_len:] = ids[prefix_len:]
      seg[i, width - len(ids) + prefix_len:] = 1
  return tokens, seg


def cut_at_stop(row: Sequence[int], stopped: bool, stop_ids) -> list[int]:
  """A sampled row up to and including its first stop id (the whole row if it has none)."""
  row = list(row)
  if stopped:
    stops = set(stop_ids)
    for j, t in enumerate(row):
      if t in stops:
        return row[:j + 1]
  return row


def generate(graphdef, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             rng, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_id: int | None = None, stop_ids: Sequence[int] = (), pad_id: int = 0,
             batch_size: int = 64, bucket: int = 16,
             share_prefix: bool = True) -> list[list[int]]:
  """Completions (token ids, the stop token included when drawn), one per prompt, in order.

  Prompts run in batches of ``batch_size`` in the given order (the last batch is filled up
  with copies so every batch has one shape); each batch's width is its longest prompt
  rounded up by ``bucket_width``. Generation stops at any of ``stop_ids`` or ``eos_id``
  (e.g. ``tokenizer.stop_ids``: the chat template's end of turn and EOS). Batch j draws with
  ``fold_in(rng, j)``. With ``share_prefix``, a batch's shared prefix (``shared_prefix_len``,
  a multiple of ``bucket``) and each run of identical prompts (``prompt_copies``) are
  prefilled once.
  """
  if not len(prompts):
    return []
  if any(len(p) == 0 for p in prompts):
    raise ValueError("generate: every prompt needs at least one token (e.g. BOS)")
  stops = tuple(sorted(set(int(s) for s in stop_ids) | ({int(eos_id)} if eos_id is not None
                                                        else set())))
  out: list[list[int]] = []
  for j, start in enumerate(range(0, len(prompts), batch_size)):
    chunk = list(prompts[start:start + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)          # fixed batch shape: one compile
    width = bucket_width(max(len(x) for x in chunk), bucket)
    prefix = shared_prefix_len(chunk, bucket) if share_prefix else 0
    copies = prompt_copies(chunk) if share_prefix else 1
    tokens, seg = left_pad(chunk, width, pad_id, prefix)
    res, _, stopped = sample_batch(
        graphdef, params, jnp.asarray(tokens), jnp.asarray(seg), jax.random.fold_in(rng, j),
        max_new_tokens=max_new_tokens, temperature=float(temperature), top_p=float(top_p),
        top_k=int(top_k), stop_ids=stops, pad_id=pad_id, prefix_len=prefix, copies=copies)
    res, stopped = np.asarray(res), np.asarray(stopped)
    out += [cut_at_stop(row, s, stops) for row, s in zip(res[:n].tolist(), stopped[:n])]
  return out
