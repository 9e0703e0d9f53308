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


def batched_apply(fn, rows: Sequence[dict], batch_size: int, desc: str | None = None):
  """``fn(stacked batch) -> [b] array`` over rows in fixed-size batches (last one padded)."""
  out = []
  steps = range(0, len(rows), batch_size)
  for s in tqdm(steps, desc=desc, disable=desc is None or len(steps) < 4, leave=False):
    chunk = list(rows[s:s + batch_size])
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - n)
    out.append(np.asarray(fn(stack(chunk)))[:n])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


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
