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


def encode_unpaired(tokenizer, max_len: int, truncate: str = "prompt_left") -> Callable:
  """A batch-level encoder: [{"prompt", "response", "label"}] -> response_*, kl_*, labels.

  ``kl_*`` rows pair prompt i with the response of example (i - 1) mod B of the same batch
  (a deterministic shift, as in KTO / TRL), giving the mismatched (x, y') rows of KTO's
  reference point z0. ``labels`` [B] are 1 (desirable) or 0 (undesirable).
  """

  def fn(exs):
    exs = list(exs)
    rows = []
    for i, ex in enumerate(exs):
      where = f"example {ex.get('id', '?')}"
      if not ex.get("response"):
        raise DataError(f"{where}: empty 'response'")
      if ex.get("label") not in (0, 1, True, False):
        raise DataError(f"{where}: 'label' must be 0/1 or a bool, got {ex.get('label')!r}")
      prompt = tokenizer.encode_prompt(ex["prompt"])
      resp, c1 = pack(prompt, tokenizer.encode_completion(ex["response"]), max_len,
                      truncate=truncate, where=where)
      other = exs[(i - 1) % len(exs)]["response"]
      kl, c2 = pack(prompt, tokenizer.encode_completion(other), max_len, truncate=truncate,
                    where=f"{where} (kl row)")
      row = {f"response_{k}": v for k, v in resp.items()}
      row.update({f"kl_{k}": v for k, v in kl.items()})
      row["labels"] = np.float32(bool(ex["label"]))
      row["truncated"] = np.float32(c1 or c2)
      row["example_mask"] = np.float32(1.0)
      rows.append(row)
    return stack(rows)

  fn.batch_level = True
  return fn


def encode_group(tokenizer, max_len: int, group_size: int,
                 truncate: str = "prompt_left") -> Callable:
  """example {"prompt", "chosen": [k_w], "rejected": [k_l]} -> rows [K, T] and masks [K].

  Each side is padded to ``group_size`` (K) with copies of its first sample whose mask is 0,
  so every row is a valid sequence and padded samples never count in the loss.
  """

  def fn(ex):
    where = f"example {ex.get('id', '?')}"
    prompt = tokenizer.encode_prompt(ex["prompt"])
    out, cut = {}, False
    for side in ("chosen", "rejected"):
      group = ex.get(side)
      if isinstance(group, str) or not group:
        raise DataError(f"{where}: {side!r} must be a non-empty list of responses")
      if len(group) > group_size:
        raise DataError(f"{where}: {len(group)} {side} samples exceed group_size={group_size}")
      rows = []
      for j, y in enumerate(group):
        if not y:
          raise DataError(f"{where}: empty {side} response {j}")
        row, c = pack(prompt, tokenizer.encode_completion(y), max_len, truncate=truncate,
                      where=f"{where} ({side} {j})")
        cut |= c
        rows.append(row)
      mask = np.zeros(group_size, np.float32)
      mask[:len(rows)] = 1.0
      rows += [rows[0]] * (group_size - len(rows))
      out.update(stack(rows, prefix=f"{side}_"))
      out[f"{side}_mask"] = mask
    out["truncated"] = np.float32(cut)
    out["example_mask"] = np.float32(1.0)
    out["alpha"] = np.float32(ex.get("alpha", np.nan))
    return out

  return fn


def check_examples(examples: Sequence[dict], encode: Callable) -> None:
  """Encodes every example once up front so bad data fails before training starts."""
  for ex in examples:
    encode([ex]) if getattr(encode, "batch_level", False) else encode(ex)


def batched(examples: Sequence[dict], encode: Callable, batch_size: int, *, seed: int,
            num_steps: int, shuffle: bool = True) -> grain.MapDataset:
  """A random-access dataset of at least ``num_steps`` batches (epochs reshuffled together)."""
  if len(examples) < batch_size:
    raise DataError(f"{len(examples)} examples are fewer than one batch of {batch_size}")
  epochs = max(1, math.ceil(num_steps * batch_size / len(examples)))
  ds = grain.MapDataset.source(list(examples)).repeat(epochs)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if getattr(encode, "batch_level", False):   # the encoder sees the whole batch (KTO)
    return ds.batch(batch_size, drop_remainder=True, batch_fn=encode)
  return ds.map(encode).batch(batch_size, drop_remainder=True)


def eval_batches(examples: Sequence[dict], encode: Callable, batch_size: int):
  """Every example once, in order; the last batch is padded with example_mask = 0."""
  if getattr(encode, "batch_level", False):
    raise DataError("eval_batches takes per-example encoders; batch-level ones (unpaired) "
                    "need whole batches")
  rows = [encode(ex) for ex in examples]
  for i in range(0, len(rows), batch_size):
    chunk = rows[i:i + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      blank = {k: np.zeros_like(v) for k, v in chunk[0].items()}
      chunk = chunk + [blank] * pad
    yield stack(chunk)
