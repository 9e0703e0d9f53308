"""Grain pipelines: examples -> fixed-length numpy batches, random access by step.

Batches are a pure function of (examples, seed, step): ``dataset[step]`` is the batch of
that step, so a run resumed from a checkpoint at step s sees exactly the batches it would
have seen, without any iterator state to save.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import grain
import numpy as np

from prefjax.data.collate import DataError, pack, stack


def encode_sft(tokenizer, max_len: int, truncate: str = "prompt_left") -> Callable:
  """example {"prompt", "response"} -> packed row (+ truncated, example_mask)."""

  def fn(ex):
    where = f"example {ex.get('id', '?')}"
    if not ex.get("response"):
      raise DataError(f"{where}: empty 'response'")
    row, cut = pack(tokenizer.encode_prompt(ex["prompt"]),
                    tokenizer.encode_completion(ex["response"]), max_len, truncate=truncate,
                    where=where)
    row["truncated"] = np.float32(cut)
    row["example_mask"] = np.float32(1.0)
    return row

  return fn


def encode_pair(tokenizer, max_len: int, truncate: str = "prompt_left") -> Callable:
  """example {"prompt", "chosen", "rejected"[, "alpha"]} -> chosen_* and rejected_* rows."""

  def fn(ex):
    where = f"example {ex.get('id', '?')}"
    prompt = tokenizer.encode_prompt(ex["prompt"])
    out, cut = {}, False
    for side in ("chosen", "rejected"):
      if not ex.get(side):
        raise DataError(f"{where}: empty {side!r} response")
      row, c = pack(prompt, tokenizer.encode_completion(ex[side]), max_len, truncate=truncate,
                    where=f"{where} ({side})")
      cut |= c
      out.update({f"{side}_{k}": v for k, v in row.items()})
    out["truncated"] = np.float32(cut)
    out["example_mask"] = np.float32(1.0)
    out["alpha"] = np.float32(ex.get("alpha", np.nan))
    return out

  return fn


def check_examples(examples: Sequence[dict], encode: Callable) -> None:
  """Encodes every example once up front so bad data fails before training starts."""
  for ex in examples:
    encode(ex)


def batched(examples: Sequence[dict], encode: Callable, batch_size: int, *, seed: int,
            num_steps: int, shuffle: bool = True) -> grain.MapDataset:
  """A random-access dataset of at least ``num_steps`` batches (epochs reshuffled together)."""
  if len(examples) < batch_size:
    raise DataError(f"{len(examples)} examples are fewer than one batch of {batch_size}")
  epochs = max(1, math.ceil(num_steps * batch_size / len(examples)))
  ds = grain.MapDataset.source(list(examples)).repeat(epochs)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  return ds.map(encode).batch(batch_size, drop_remainder=True)


def eval_batches(examples: Sequence[dict], encode: Callable, batch_size: int):
  """Every example once, in order; the last batch is padded with example_mask = 0."""
  rows = [encode(ex) for ex in examples]
  for i in range(0, len(rows), batch_size):
    chunk = rows[i:i + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      blank = {k: np.zeros_like(v) for k, v in chunk[0].items()}
      chunk = chunk + [blank] * pad
    yield stack(chunk)
