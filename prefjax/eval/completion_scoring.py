"""Scoring completions: summed completion log-probs of packed rows, jit-compiled, batched."""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from prefjax.data.collate import pack, stack
from prefjax.models.logprobs import forward_logps


@functools.partial(jax.jit, static_argnames=("graphdef",))
def completion_logps(graphdef, params, batch):
  """(log pi(completion | prompt) summed over each row's completion tokens [B], their
  counts [B]) of a packed batch: the jitted ``forward_logps``."""
  logps, lengths, _ = forward_logps(nnx.merge(graphdef, params), batch)
  return logps, lengths


def score_completions(graphdef, params, prompt_ids: Sequence[Sequence[int]],
                      completion_ids: Sequence[Sequence[int]], *, max_len: int,
                      batch_size: int = 64, truncate: str = "prompt_left"):
  """log pi(completion | prompt) summed over completion tokens, and token counts ([N] each)."""
  rows = [pack(p, c, max_len, truncate=truncate, where=f"completion {i}")[0]
          for i, (p, c) in enumerate(zip(prompt_ids, completion_ids))]
  logps, lengths = [], []
  for s in range(0, len(rows), batch_size):
    chunk = rows[s:s + batch_size]
    n = len(chunk)
    chunk = chunk + [chunk[-1]] * (batch_size - n)
    lp, ln = completion_logps(graphdef, params, stack(chunk))
    logps.append(np.asarray(lp)[:n])
    lengths.append(np.asarray(ln)[:n])
  return np.concatenate(logps), np.concatenate(lengths)
