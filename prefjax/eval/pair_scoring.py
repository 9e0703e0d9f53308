"""Scoring preference pairs: summed and per-token mean log-likelihoods, length-bucketed.

Every completion is packed (``prefjax.data.collate.pack``) at the smallest bucket length
that holds it, rows of one bucket are batched at a fixed batch size (the last batch padded
by repeating a row), and each batch goes through the jitted ``prefjax.eval.scoring._score``.
So a whole dataset compiles at most ``len(bucket_lengths(max_len))`` shapes, whatever the
spread of its lengths.

The scores are what Chen et al., "Preference Learning Algorithms Do Not Learn Preference
Rankings" (arXiv 2405.19534) rank with: R uses the summed log-likelihood
log pi(y|x) = sum_t log pi(y_t|x, y_<t), R-tilde its per-token mean.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from prefjax.data.collate import pack, stack
from prefjax.errors import PrefjaxError
from prefjax.eval.scoring import _score


def bucket_lengths(max_len: int, smallest: int = 32) -> list[int]:
  """Powers of two from ``smallest`` up to (and ending at) ``max_len``: few jit shapes."""
  out, n = [], smallest
  while n < max_len:
    out.append(n)
    n *= 2
  return out + [max_len]


def packed_length(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> int:
  """Row length ``pack`` needs without truncation: len(prompt) + len(completion) - 1."""
  return len(prompt_ids) + len(completion_ids) - 1


@dataclasses.dataclass
class Scores:
  """Per-sequence scores, ``[N]`` each, in input order.

  Attributes:
    sums: summed completion log-probs log pi(y|x).
    lengths: completion token counts (EOS included).
    truncated: whether the prompt was cut from the left to fit ``max_len``.
    seconds: wall time of the forward passes (compiles included).
    num_shapes: how many (batch, length) shapes were run.
  """
  sums: np.ndarray
  lengths: np.ndarray
  truncated: np.ndarray
  seconds: float = 0.0
  num_shapes: int = 0

  @property
  def means(self) -> np.ndarray:
    """Per-token mean log-prob (R-tilde's score); 0 for an empty completion."""
    return self.sums / np.maximum(self.lengths, 1.0)

  @property
  def sequences_per_second(self) -> float:
    return len(self.sums) / max(self.seconds, 1e-9)


def score_sequences(graphdef, params, prompt_ids: Sequence[Sequence[int]],
                    completion_ids: Sequence[Sequence[int]], *, max_len: int,
                    batch_size: int = 32, smallest_bucket: int = 32,
                    progress: bool = False, desc: str = "scoring") -> Scores:
  """log pi(completion | prompt) of N sequences with length-bucketed jitted forward passes.

  Args:
    graphdef, params: the model (``nnx.split``; params a pure dict).
    prompt_ids, completion_ids: N token-id lists (prompt with BOS, completion with EOS).
    max_len: the longest row; longer prompts are cut from the left (counted in
      ``truncated``), a completion that cannot fit raises ``DataError`` (callers that
      must not fail check ``packed_length`` first).
    batch_size: rows per forward pass.
    smallest_bucket: the first bucket length (then powers of two up to ``max_len``).
    progress: show a tqdm bar over sequences.

  Returns:
    ``Scores`` with ``[N]`` arrays in input order.
  """
  n = len(prompt_ids)
  buckets = bucket_lengths(max_len, smallest_bucket)
  groups: dict[int, list[int]] = {}
  for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
    need = packed_length(p, c)
    length = next((b for b in buckets if b >= need), max_len)
    groups.setdefault(length, []).append(i)
  sums, lengths = np.zeros(n, np.float32), np.zeros(n, np.float32)
  truncated = np.zeros(n, bool)
  bar = tqdm(total=n, desc=desc, disable=not progress, dynamic_ncols=True, unit="seq")
  t0, shapes = time.perf_counter(), 0
  for length in sorted(groups):
    idx = groups[length]
    shapes += 1
    for s in range(0, len(idx), batch_size):
      chunk = idx[s:s + batch_size]
      rows = []
      for i in chunk:
        row, cut = pack(prompt_ids[i], completion_ids[i], length, where=f"sequence {i}")
        rows.append(row)
        truncated[i] = cut
      rows += [rows[-1]] * (batch_size - len(rows))  # fixed shape: pad by repeating a row
      lp, ln = _score(graphdef, params, stack(rows))
      sums[chunk] = np.asarray(lp)[:len(chunk)]
      lengths[chunk] = np.asarray(ln)[:len(chunk)]
      bar.update(len(chunk))
  bar.close()
  return Scores(sums, lengths, truncated, time.perf_counter() - t0, shapes)


def encode_pairs(tokenizer, pairs: Sequence[dict], *, max_len: int):
  """Tokenises pairs ``{"prompt" | "chat", "chosen", "rejected"}``; drops what can't fit.

  The prompt goes through ``tokenizer.encode_prompt`` (given the chat messages when the
  pair has them and the tokenizer takes messages, else the prompt text).

  Returns:
    ``(prompts, chosen, rejected, kept, dropped)``: id lists of the kept pairs, their
    indices into ``pairs``, and ``(index, reason)`` for pairs that cannot be scored (a
    completion longer than ``max_len``, a character the tokenizer rejects).
  """
  prompts, chosen, rejected, kept, dropped = [], [], [], [], []
  for i, ex in enumerate(pairs):
    try:
      prompt = tokenizer.encode_prompt(ex.get("chat") or ex["prompt"])
      ids = [tokenizer.encode_completion(ex[side]) for side in ("chosen", "rejected")]
    except (ValueError, KeyError, TypeError, PrefjaxError) as e:
      dropped.append((i, f"cannot tokenise: {e}"))
      continue
    too_long = [len(c) for c in ids if len(c) > max_len]
    if too_long:
      dropped.append((i, f"completion of {max(too_long)} tokens exceeds max_len={max_len}"))
      continue
    if any(len(c) == 0 for c in ids):
      dropped.append((i, "empty completion"))
      continue
    prompts.append(prompt)
    chosen.append(ids[0])
    rejected.append(ids[1])
    kept.append(i)
  return prompts, chosen, rejected, kept, dropped


def score_pairs(graphdef, params, prompts, chosen, rejected, **kw) -> tuple[Scores, Scores]:
  """``score_sequences`` on chosen and rejected in one pass: ``(chosen, rejected)``."""
  both = score_sequences(graphdef, params, list(prompts) * 2, list(chosen) + list(rejected),
                         **kw)
  n = len(prompts)
  part = lambda s: Scores(both.sums[s], both.lengths[s], both.truncated[s], both.seconds,
                          both.num_shapes)
  return part(slice(0, n)), part(slice(n, None))

