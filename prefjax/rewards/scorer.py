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
from prefjax.data.pipeline import bucket_lengths
from prefjax.errors import DataError
from prefjax.eval import row_scoring


def fit_for_scoring(tokenizer, prompt: str, response: str, max_len: int, *,
                    where: str = "example"):
  """(prompt ids, completion ids cut to fit, completion tokens before the cut, cut).

  A response longer than fits (with at least min(prompt, max_len // 4) prompt tokens) keeps
  its first tokens; the prompt is then cut from the left (BOS kept) where it is laid out
  (``collate.pack`` / ``layout.cut_prompt``).
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
  return p, (c[:room] if cut else c), n_tokens, cut


def pack_for_scoring(tokenizer, prompt: str, response: str, max_len: int, *,
                     where: str = "example"):
  """One packed row for scoring; returns (row, completion tokens before any cut, truncated)
  (the cuts of ``fit_for_scoring``)."""
  p, c, n_tokens, cut = fit_for_scoring(tokenizer, prompt, response, max_len, where=where)
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
  if not len(rows):
    return np.zeros((0,), np.float32)
  t = len(rows[0]["input_ids"])
  used = [int(np.flatnonzero(r["segment_ids"])[-1]) + 1 if np.any(r["segment_ids"]) else 1
          for r in rows] if "segment_ids" in rows[0] else [t] * len(rows)
  buckets = bucket_lengths(t, min(smallest_bucket, t), per_octave=1)
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


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _rewards_at(graphdef, params, rows, idx_bw):
  return nnx.merge(graphdef, params).rewards_at(rows, idx_bw)


SCORING_LAYOUTS = ("prefix", "plain")


class RewardScorer:
  """A trained ``RewardModel`` as a scorer.

  ``layout="prefix"`` (default): responses to the same prompt share one prefix-shared unit
  (the prompt run once; ``prefjax.eval.row_scoring``), units packed best-fit decreasing
  into rows of ``2 * max_len`` tokens, length-bucketed; ``"plain"``: one row per
  (prompt, response), length-sorted. Equal rewards (tests/rewards/test_reward_layouts.py).

  Attributes:
    last_tokens: [N] completion token counts (incl. EOS) of the last ``score`` call.
    last_truncated: [N] bool, rows that were cut to fit ``max_len``.
  """

  def __init__(self, graphdef, params, tokenizer, *, max_len: int, batch_size: int = 32,
               layout: str = "prefix", progress: bool | None = None):
    if layout not in SCORING_LAYOUTS:
      raise ValueError(f"unknown scoring layout {layout!r}; expected one of {SCORING_LAYOUTS}")
    self.graphdef, self.params, self.tokenizer = graphdef, params, tokenizer
    self.max_len, self.batch_size, self.layout = max_len, batch_size, layout
    self.progress = progress          # None: a bar for long calls (>= 4 batches)
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
    if self.layout == "prefix":
      return self._score_units(prompts, responses)
    rows = self._rows(prompts, responses)
    fn = lambda b: _rewards(self.graphdef, self.params, b)
    desc = None if self.progress is False else "scoring"
    return batched_apply(fn, rows, self.batch_size, desc=desc).astype(np.float32)

  def _fit(self, prompts, responses):
    """(prompt ids [N], completion ids cut to fit [N], groups [(prompt ids, [indices])]);
    sets ``last_tokens`` and ``last_truncated`` (response cuts; callers add prompt cuts).

    A group holds responses to one prompt, as many as fit one row of ``2 * max_len`` tokens
    (prompt once, then each response); a prompt with more responses gets several groups.
    """
    groups: dict[tuple, list[int]] = {}
    p_ids, comp, toks, cut = [], [], [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
      pi, c, k, cu = fit_for_scoring(self.tokenizer, p, r, self.max_len, where=f"response {i}")
      groups.setdefault(tuple(pi), []).append(i)
      p_ids.append(pi)
      comp.append(c)
      toks.append(k)
      cut.append(cu)
    self.last_tokens = np.asarray(toks, dtype=np.int64)
    self.last_truncated = np.asarray(cut, dtype=bool)
    row_len, out = 2 * self.max_len, []
    for key, idx in groups.items():
      cur, size = [], len(key) - 1
      for i in idx:
        if cur and size + len(comp[i]) > row_len:
          out.append((list(key), cur))
          cur, size = [], len(key) - 1
        cur.append(i)
        size += len(comp[i])
      out.append((list(key), cur))
    return p_ids, comp, out

  def _unit_kwargs(self, n: int) -> dict:
    """Rows of 2 * max_len tokens (a prompt and two responses fit), the plain path's token
    budget per pass."""
    row_len = 2 * self.max_len
    buckets = bucket_lengths(row_len, min(32, row_len), per_octave=1)
    return dict(row_len=row_len, buckets=buckets,
                batch_size=self.batch_size, batch_tokens=self.batch_size * self.max_len,
                progress=(n >= 4 * self.batch_size if self.progress is None
                          else self.progress), desc="scoring")

  def _score_units(self, prompts, responses) -> np.ndarray:
    n = len(responses)
    _, comp, groups = self._fit(prompts, responses)
    if n == 0:
      return np.zeros((0,), np.float32)
    window = nnx.merge(self.graphdef, self.params).cfg.sliding_window
    kw = self._unit_kwargs(n)
    units, cut_prompt = row_scoring.make_units(
        [g[0] for g in groups], [g[1] for g in groups], comp, max_len=self.max_len,
        row_len=kw["row_len"], window=window)
    values, _, _, _ = row_scoring.score_units(self.graphdef, self.params, units, n,
                                              values=_rewards_at, **kw)
    self.last_truncated = self.last_truncated | cut_prompt
    return values.astype(np.float32)
