"""Scoring on prefix-shared, packed, length-sorted rows: each prompt computed once.

The sequences of one prompt (a pair's chosen and rejected) become one *unit* of
``prefjax.data.layout.unit_arrays``: [prompt | p_last r1 | p_last r2], each response a
branch that sees the prompt and itself only, so its log-probs equal those of its own plain
row ``[prompt | r]`` while the prompt is run once. Units are packed by
``layout.best_fit_decreasing`` into rows of at most ``row_len`` tokens (segment ids keep
them apart), each row is cut to the smallest bucket length that holds it, rows are sorted
by length and run a bucket at a time at a token budget per pass: one compiled program per
bucket. The vocabulary head runs only on completion tokens, gathered to a ``[B, W]`` window
per bucket, ``chunk_size`` tokens at a time (``chunked_token_logprobs``: no [B, T, V]
logits), and the per-token log-probs are summed per sequence on the host.

Equal to the plain path (``pair_scoring.score_sequences(layout="plain")``) by construction:
  * the prompt is cut exactly as ``collate.pack`` cuts it for each response
    (``layout.cut_prompt``); when the responses of one prompt would need different cuts
    (truncation at ``max_len``) they are laid out as separate one-response units, which are
    plain rows;
  * a shared unit is at most max(``row_len``, ``max_len``) tokens (else it is split the same
    way); units are packed into rows of ``row_len`` (default ``max_len``) and a unit longer
    than ``row_len`` gets a row of its own, so rows shorter than ``max_len`` still score
    every sequence of up to ``max_len`` tokens (on a 2-core CPU they were not faster:
    experiments/results/cpu_scoring_row_len_s8.json);
  * sliding-window models index their window by row slot, which a shared prompt shifts for
    the second response: a unit is shared only when it fits inside the window.
"""
from __future__ import annotations

import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from prefjax.data import layout
from prefjax.models.logprobs import chunked_token_logprobs

_FIELDS = ("input_ids", "target_ids", "positions", "segment_ids", "branch_ids")


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk_size"))
def _window_logps(graphdef, params, rows, idx_bw, chunk_size: int):
  """Log-probs [B, W] of the targets at row slots ``idx_bw`` (the completion tokens)."""
  model = nnx.merge(graphdef, params)
  hidden, _ = model(rows["input_ids"], rows["positions"], rows["segment_ids"],
                    return_hidden=True, branch_ids_bt=rows["branch_ids"])        # [B, T, D]
  h_bwd = jnp.take_along_axis(hidden, idx_bw[..., None], axis=1)                 # [B, W, D]
  y_bw = jnp.take_along_axis(rows["target_ids"], idx_bw, axis=1)
  w, vocab_major, softcap = model.unembedding()
  return chunked_token_logprobs(h_bwd, w, y_bw, chunk_size=chunk_size, softcap=softcap,
                                vocab_major=vocab_major)


def make_units(prompt_ids: Sequence[Sequence[int]], groups: Sequence[Sequence[int]],
               completion_ids: Sequence[Sequence[int]], *, max_len: int,
               row_len: int | None = None, share: bool = True, window: int | None = None):
  """Units of ``layout.unit_arrays`` whose slot ids are sequence indices.

  Args:
    prompt_ids: one token list per group (with BOS).
    groups: per group, the indices into ``completion_ids`` of its responses.
    completion_ids: N completion token lists (with EOS).
    max_len: the plain path's row length: a prompt is cut (from the left, BOS kept) as
      ``collate.pack`` cuts it for each response; a completion longer than the row raises.
    row_len: the packed rows' length (default ``max_len``); shared units are at most
      max(row_len, max_len) tokens (one-response units are at most ``max_len`` anyway).
    share: lay a group out as one prefix-shared unit where that is exact (else one unit
      per response, i.e. packed plain rows).
    window: the model's sliding window, if any (a shared unit must fit in it).

  Returns:
    (units, truncated [N] bool).
  """
  units, truncated = [], np.zeros(len(completion_ids), bool)
  for g, (prompt, seqs) in enumerate(zip(prompt_ids, groups)):
    cuts = [layout.cut_prompt(prompt, len(completion_ids[s]), max_len, "prompt_left",
                              f"sequence {s}") for s in seqs]
    for s, (_, cut) in zip(seqs, cuts):
      truncated[s] = cut
    resp = [completion_ids[s] for s in seqs]
    size = len(cuts[0][0]) - 1 + sum(map(len, resp)) if cuts else 0
    if (share and len(seqs) > 1 and all(c[0] == cuts[0][0] for c in cuts)
        and size <= max(row_len or max_len, max_len) and (window is None or size <= window)):
      units.append(layout.unit_arrays(cuts[0][0], resp, seqs, 0, 1))
    else:
      units += [layout.unit_arrays(p, [r], [s], 0, 1) for (p, _), r, s in zip(cuts, resp, seqs)]
  return units, truncated


def pack_rows(units: Sequence[dict], *, row_len: int, buckets: Sequence[int]):
  """Best-fit-decreasing rows of ``row_len`` tokens, each cut to its smallest bucket; a unit
  longer than ``row_len`` is a row of its own.

  Returns:
    {bucket length: [row dicts of ``layout.ROW_FIELDS`` arrays [L]]}, rows of a bucket
    sorted by fill (longest first).
  """
  sizes = [len(u["input_ids"]) for u in units]
  if sizes and max(sizes) > buckets[-1]:
    raise ValueError(f"a unit of {max(sizes)} tokens exceeds the longest bucket {buckets[-1]}")
  small = [u for u, n in enumerate(sizes) if n <= row_len]
  where = layout.best_fit_decreasing([sizes[u] for u in small], row_len)
  bins: dict[int, list[int]] = {}
  for u, b in zip(small, where):
    bins.setdefault(b, []).append(u)
  for u, n in enumerate(sizes):
    if n > row_len:
      bins[len(bins)] = [u]
  out: dict[int, list] = {}
  for members in sorted(bins.values(), key=lambda m: -sum(sizes[u] for u in m)):
    fill = sum(sizes[u] for u in members)
    length = next(b for b in buckets if b >= fill)
    row = layout.rows_batch([units[u] for u in members], 1, length, where="scoring row")
    out.setdefault(length, []).append({k[5:]: v[0] for k, v in row.items()})
  return out


def score_units(graphdef, params, units: Sequence[dict], n_seq: int, *, row_len: int,
                buckets: Sequence[int], batch_size: int = 32, batch_tokens: int | None = None,
                chunk_size: int = 512, progress: bool = False, desc: str = "scoring",
                values=None):
  """Summed completion log-probs and token counts ([N] float32) of packed units.

  ``buckets`` must end at a length >= the longest unit. A bucket of length L runs
  ``clamp(batch_tokens // L, 1, batch_size)`` rows per pass (``batch_size`` without a
  budget); the last pass of a bucket is padded with empty rows.
  ``values``: instead of log-probs, ``values(graphdef, params, rows, idx_bw) -> [B, W]``
  read at each sequence's LAST completion slot (a reward head: ``RewardModel.rewards_at``);
  the first output is then those values.

  Returns:
    (sums [N] (or values), lengths [N], seconds, number of buckets run).
  """
  by_len = pack_rows(units, row_len=row_len, buckets=buckets)
  sums, lengths = np.zeros(n_seq, np.float32), np.zeros(n_seq, np.float32)
  bar = tqdm(total=n_seq, desc=desc, disable=not progress, dynamic_ncols=True, unit="seq")
  t0 = time.perf_counter()
  for length in sorted(by_len):
    rows = by_len[length]
    per_pass = batch_size if not batch_tokens else max(1, min(batch_size, batch_tokens // length))
    # one completion window per bucket (its fullest row), so one shape per bucket
    need = max(int(r["loss_mask"].sum()) for r in rows)
    width = min(length, -(-need // 32) * 32)
    for s in range(0, len(rows), per_pass):
      chunk = rows[s:s + per_pass]
      idx = np.zeros((per_pass, width), np.int32)
      seq = np.full((per_pass, width), -1, np.int64)
      batch = {k: np.zeros((per_pass, length), np.int32) for k in _FIELDS}
      for b, r in enumerate(chunk):
        for k in _FIELDS:
          batch[k][b] = r[k]
        slots = np.flatnonzero(r["loss_mask"])
        idx[b, :len(slots)] = slots
        seq[b, :len(slots)] = r["slot_ids"][slots]
      real = seq >= 0
      if values is None:
        tok = np.asarray(_window_logps(graphdef, params, batch, idx, chunk_size))
        np.add.at(sums, seq[real], tok[real])
      else:   # a sequence's slots are contiguous in its row: keep the value at the last one
        val = np.asarray(values(graphdef, params, batch, idx))
        nxt = np.concatenate([seq[:, 1:], np.full((len(seq), 1), -2)], axis=1)
        last = real & (nxt != seq)
        sums[seq[last]] = val[last]
      np.add.at(lengths, seq[real], 1.0)
      bar.update(len(set(seq[real].tolist())))
  bar.close()
  return sums, lengths, time.perf_counter() - t0, len(by_len)
