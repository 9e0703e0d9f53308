"""Packing (prompt, completion) token ids into fixed-length training rows.

One place decides where the prompt ends and the completion starts: the caller passes the
two id lists (BOS inside the prompt, EOS at the end of the completion, exactly once), and
the row is ``input_ids = full[:-1]``, ``target_ids = full[1:]``, with ``loss_mask`` = 1 on
the targets that belong to the completion.

Truncation policy (explicit, counted): when prompt + completion do not fit ``max_len``,
``truncate="prompt_left"`` (default) drops prompt tokens from the left, keeping the first
token (BOS) and the whole completion; ``truncate="error"`` raises. A completion that does not
fit even with a one-token prompt always raises ``DataError``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


from prefjax.errors import DataError  # noqa: F401  (re-exported)


TRUNCATION_POLICIES = ("prompt_left", "error")


def pack(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_len: int, *,
         truncate: str = "prompt_left", pad_id: int = 0, where: str = "example"):
  """One training row. Returns (dict of [max_len] int32 arrays, truncated: bool)."""
  if truncate not in TRUNCATION_POLICIES:
    raise ValueError(f"unknown truncation policy {truncate!r}; expected {TRUNCATION_POLICIES}")
  prompt_ids, completion_ids = list(prompt_ids), list(completion_ids)
  if not prompt_ids:
    raise DataError(f"{where}: empty prompt (it must contain at least the BOS token)")
  if not completion_ids:
    raise DataError(f"{where}: empty completion")
  truncated = False
  if len(prompt_ids) + len(completion_ids) - 1 > max_len:
    room = max_len + 1 - len(completion_ids)
    if room < 1:
      raise DataError(f"{where}: completion of {len(completion_ids)} tokens does not fit "
                      f"max_len={max_len}")
    if truncate == "error":
      raise DataError(f"{where}: prompt of {len(prompt_ids)} + completion of "
                      f"{len(completion_ids)} tokens exceeds max_len={max_len} "
                      f"(set truncate='prompt_left' to cut the prompt)")
    prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - room + 1:] if room > 1 else prompt_ids[:1]
    truncated = True
  full = prompt_ids + completion_ids
  n = len(full) - 1
  row = {k: np.zeros(max_len, np.int32) for k in
         ("input_ids", "target_ids", "loss_mask", "positions", "segment_ids")}
  row["input_ids"][:] = pad_id
  row["target_ids"][:] = pad_id
  row["input_ids"][:n] = full[:-1]
  row["target_ids"][:n] = full[1:]
  row["loss_mask"][len(prompt_ids) - 1:n] = 1
  row["positions"][:n] = np.arange(n)
  row["segment_ids"][:n] = 1
  return row, truncated


def stack(rows: Sequence[dict], prefix: str = "") -> dict:
  return {prefix + k: np.stack([r[k] for r in rows]) for k in rows[0]}
