"""Scorers: ``score(prompts, responses) -> rewards [N]`` for any reward (model or implicit).

Every reward in prefjax is used through this one interface (RewardBench-style evaluation,
calibration studies, best-of-n): ``RewardScorer`` wraps a trained ``RewardModel``;
``prefjax.rewards.implicit.ImplicitRewardScorer`` the DPO implicit reward. Both pack rows
with ``pack_for_scoring`` (which cuts over-long responses to fit ``max_len``, keeping their
beginning, and counts it) and run jitted, fixed-shape batches.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from prefjax.data.collate import pack, stack
from prefjax.errors import DataError


def pack_for_scoring(tokenizer, prompt: str, response: str, max_len: int, *,
                     where: str = "example"):
  """One packed row for scoring; returns (row, completion tokens before any cut, truncated).

  A response longer than fits (with at least min(prompt, max_len // 4) prompt tokens) keeps
  its first tokens; the prompt is then cut from the left (BOS kept) by ``pack``.
  """
  try:
    p = tokenizer.encode_prompt(prompt)
    c = tokenizer.encode_completion(response)
  except ValueError as e:   # e.g. text outside the testbed alphabet
    raise DataError(f"{where}: cannot tokenize with {type(tokenizer).__name__}: "
                    f"{str(e)[:160]}") from None
  n_tokens = len(c)
  room = max_len - min(len(p), max(1, max_len // 4)) + 1
  cut = len(c) > room
  if cut:
    c = c[:room]
  row, cut_prompt = pack(p, c, max_len, truncate="prompt_left", where=where)
  return row, n_tokens, cut or cut_prompt


def batched_apply(fn, rows: Sequence[dict], batch_size: int, desc: str | None = None, *,
                  smallest_bucket: int = 32):
  """``fn(stacked batch) -> [b, ...] array`` over rows, length-sorted, in input order.

  Rows are sorted by their used length (the last non-padding slot, ``segment_ids``), cut
  to the smallest of ``bucket_lengths(T)`` that holds them and run in fixed-size batches
  per bucket (the last one padded by repeating a row): short rows skip the padding, and
  the whole set compiles at most one shape per bucket. Cutting trailing padding changes
  no result (causal attention; padding is never read).
  """
  from prefjax.eval.pair_scoring import bucket_lengths
  if not len(rows):
    return np.zeros((0,), np.float32)
  t = len(rows[0]["input_ids"])
  used = [int(np.flatnonzero(r["segment_ids"])[-1]) + 1 if np.any(r["segment_ids"]) else 1
          for r in rows] if "segment_ids" in rows[0] else [t] * len(rows)
  buckets = bucket_lengths(t, min(smallest_bucket, t))
  groups: dict[int, list[int]] = {}
  for i in np.argsort(used, kind="stable"):
    groups.setdefault(next(b for b in buckets if b >= used[i]), []).append(int(i))
  out = None
  steps = [(length, idx[s:s + batch_size]) for length, idx in sorted(groups.items())
           for s in range(0, len(idx), batch_size)]
  for length, chunk in tqdm(steps, desc=desc, disable=desc is None or len(steps) < 4,
                            leave=False):
    batch = [{k: v[:length] for k, v in rows[i].items()} for i in chunk]
    batch += [batch[-1]] * (batch_size - len(chunk))
    res = np.asarray(fn(stack(batch)))[:len(chunk)]
    if out is None:
      out = np.zeros((len(rows),) + res.shape[1:], res.dtype)
    out[chunk] = res
  return out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _rewards(graphdef, params, batch):
  return nnx.merge(graphdef, params).rewards(batch)


class RewardScorer:
  """A trained ``RewardModel`` as a scorer.

  Attributes:
    last_tokens: [N] completion token counts (incl. EOS) of the last ``score`` call.
    last_truncated: [N] bool, rows that were cut to fit ``max_len``.
  """

  def __init__(self, graphdef, params, tokenizer, *, max_len: int, batch_size: int = 32):
    self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
    self.max_len, self.batch_size = max_len, batch_size
    self.last_tokens = self.last_truncated = None

  def _rows(self, prompts, responses):
    rows, toks, cut = [], [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
      row, n, c = pack_for_scoring(self.tokenizer, p, r, self.max_len, where=f"response {i}")
      rows.append(row)
      toks.append(n)
      cut.append(c)
    self.last_tokens, self.last_truncated = np.asarray(toks), np.asarray(cut)
    return rows

  def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    """Rewards [N] (float32) of the N (prompt, response) pairs."""
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = self._rows(prompts, responses)
    fn = lambda b: _rewards(self.graphdef, self.params, b)
    return batched_apply(fn, rows, self.batch_size, desc="scoring").astype(np.float32)
