"""Packing (prompt, completion) token ids into fixed-length training rows.

One place decides where the prompt ends and the completion starts: the caller passes the
two id lists (BOS inside the prompt, EOS / end-of-turn at the end of the completion, exactly
once), and the row is ``input_ids = full[:-1]``, ``target_ids = full[1:]``, with
``loss_mask`` = 1 on the targets that belong to the completion. A row of P prompt and C
completion tokens uses ``P + C - 1`` of the ``max_len`` positions.

Length policies (explicit, counted), applied in this order when a row does not fit:

1. ``completion`` in ``"error"`` / ``"drop"``: a completion of more than ``max_len`` tokens
   (it would not fit even after a one-token prompt) raises ``PolicyError`` / ``CompletionTooLong``.
2. The prompt's budget is ``max(max_len + 1 - C, floor)`` tokens: ``floor = 1`` when the
   completion fits the row with a one-token prompt (``C <= max_len``: the row is packed
   exactly as before completion policies existed), else ``floor = min(P, max_len // 2)`` (a
   completion longer than the row never pushes the prompt below half of it). A prompt over
   its budget is handled by ``truncate``: ``"prompt_left"``
   (default) drops prompt tokens from the left, keeping the first token (BOS) and the end
   (the turn that asks for the completion); ``"drop"`` raises ``PromptTooLong``; ``"error"``
   raises ``PolicyError``.
3. ``completion="truncate"``: a completion still too long keeps its first
   ``max_len + 1 - P`` tokens. The end-of-turn token is NOT kept: the row teaches how the
   response starts, not that it ends there.

``RowSkipped`` errors (``CompletionTooLong``, ``PromptTooLong``, empty parts) carry a short
``reason`` that ``pipeline.filter_examples`` counts; ``PolicyError`` stops the run.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from prefjax.errors import DataError

TRUNCATION_POLICIES = ("prompt_left", "drop", "error")
COMPLETION_POLICIES = ("truncate", "drop", "error")
ROW_FIELDS = ("input_ids", "target_ids", "loss_mask", "positions", "segment_ids")


class RowSkipped(DataError):
  """A row that cannot be used; ``reason`` is a short key the filters count by."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


class CompletionTooLong(RowSkipped):
  """``completion="drop"``: the completion does not fit ``max_len``."""

  def __init__(self, message):
    super().__init__("completion_too_long", message)


class PromptTooLong(RowSkipped):
  """``truncate="drop"``: the prompt leaves no room for the completion."""

  def __init__(self, message):
    super().__init__("prompt_too_long", message)


class PolicyError(DataError):
  """A row that a length policy set to ``"error"`` refuses: the run stops with this line."""


def _check_policies(truncate, completion):
  if truncate not in TRUNCATION_POLICIES:
    raise ValueError(f"unknown truncation policy {truncate!r}; expected {TRUNCATION_POLICIES}")
  if completion not in COMPLETION_POLICIES:
    raise ValueError(f"unknown completion policy {completion!r}; expected "
                     f"{COMPLETION_POLICIES}")


def fit_lengths(n_prompt: int, n_completion: int, max_len: int, *,
                truncate: str = "prompt_left", completion: str = "error",
                where: str = "example") -> tuple[int, int]:
  """How many prompt tokens (kept from the end, after BOS) and completion tokens (from the
  start) a row of ``max_len`` keeps, by the policies of the module docstring.

  Returns ``(P, C)`` with ``P + C - 1 <= max_len``; raises ``RowSkipped`` / ``PolicyError``.
  """
  _check_policies(truncate, completion)
  if n_prompt < 1:
    raise RowSkipped("empty_prompt",
                     f"{where}: empty prompt (it must contain at least the BOS token)")
  if n_completion < 1:
    raise RowSkipped("empty_completion", f"{where}: empty completion")
  if n_prompt + n_completion - 1 <= max_len:
    return n_prompt, n_completion
  if completion != "truncate" and n_completion > max_len:
    msg = f"{where}: completion of {n_completion} tokens does not fit max_len={max_len}"
    if completion == "drop":
      raise CompletionTooLong(msg)
    raise PolicyError(msg + " (set the completion policy to 'truncate' or 'drop')")
  # a completion longer than the row (only "truncate" gets here) leaves the prompt half of it
  floor = min(n_prompt, max(1, max_len // 2)) if n_completion > max_len else 1
  budget = max(max_len + 1 - n_completion, floor)
  p = n_prompt
  if p > budget:
    if truncate == "drop":
      raise PromptTooLong(f"{where}: prompt of {n_prompt} tokens leaves no room for the "
                          f"completion at max_len={max_len}")
    if truncate == "error":
      raise PolicyError(f"{where}: prompt of {n_prompt} + completion of {n_completion} tokens "
                        f"exceeds max_len={max_len} (set truncate='prompt_left' to cut the "
                        f"prompt)")
    p = budget
  return p, min(n_completion, max_len + 1 - p)


def pack_row(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_len: int, *,
             truncate: str = "prompt_left", completion: str = "error", pad_id: int = 0,
             where: str = "example"):
  """One training row of ``[max_len]`` int32 arrays (``ROW_FIELDS``).

  Returns:
    ``(row, prompt_cut, completion_cut)``: the row and whether each part was truncated.
  """
  prompt_ids, completion_ids = list(prompt_ids), list(completion_ids)
  p, c = fit_lengths(len(prompt_ids), len(completion_ids), max_len, truncate=truncate,
                     completion=completion, where=where)
  prompt_cut, completion_cut = p < len(prompt_ids), c < len(completion_ids)
  if prompt_cut:   # keep BOS and the last p - 1 tokens
    prompt_ids = prompt_ids[:1] + (prompt_ids[len(prompt_ids) - p + 1:] if p > 1 else [])
  full = prompt_ids + completion_ids[:c]
  n = len(full) - 1
  row = {k: np.zeros(max_len, np.int32) for k in ROW_FIELDS}
  row["input_ids"][:] = pad_id
  row["target_ids"][:] = pad_id
  row["input_ids"][:n] = full[:-1]
  row["target_ids"][:n] = full[1:]
  row["loss_mask"][p - 1:n] = 1
  row["positions"][:n] = np.arange(n)
  row["segment_ids"][:n] = 1
  return row, prompt_cut, completion_cut


def pack(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_len: int, *,
         truncate: str = "prompt_left", completion: str = "error", pad_id: int = 0,
         where: str = "example"):
  """One training row. Returns (dict of [max_len] int32 arrays, truncated: bool).

  ``truncated`` is True when the prompt or the completion was cut (``pack_row`` tells which).
  """
  row, prompt_cut, completion_cut = pack_row(prompt_ids, completion_ids, max_len,
                                             truncate=truncate, completion=completion,
                                             pad_id=pad_id, where=where)
  return row, prompt_cut or completion_cut


def stack(rows: Sequence[dict], prefix: str = "") -> dict:
  return {prefix + k: np.stack([r[k] for r in rows]) for k in rows[0]}
