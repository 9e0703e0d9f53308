"""Grain pipelines: examples -> length-bucketed numpy batches, random access by step.

Batches are a pure function of (examples, seed, step): ``dataset[step]`` is the batch of
that step, so a run resumed from a checkpoint at step s sees exactly the batches it would
have seen, without any iterator state to save.

Encoders turn one example dict into ``[max_len]`` rows (``collate.pack_row``) plus the
per-example fields ``truncated`` (the prompt was cut), ``completion_truncated`` (a
completion was cut by ``completion="truncate"``) and ``example_mask``. ``batched`` then cuts
each batch to the smallest bucket length that holds its longest row (``bucket_lengths``),
so short batches do not pay for ``max_len``; padding is on the right, masked out of the
loss, and invisible to causal attention, so completion log-probs do not change.

Rows that cannot be used are removed before training by ``filter_examples``, which counts
them by reason instead of stopping the run (``check_examples`` is the strict variant).
"""
from __future__ import annotations

import collections
import functools
import json
import math
import re
from typing import Callable, Sequence

import grain
import numpy as np

from prefjax.data.collate import (
    ROW_FIELDS, DataError, PolicyError, RowSkipped, pack_row, stack)

BATCH_METRICS = {   # batch metric name -> per-example field its mean is taken of
    "data/truncated_fraction": "truncated",
    "data/completion_truncated_fraction": "completion_truncated",
}


def batch_metrics(batch) -> dict:
  """The data metrics of one batch (``BATCH_METRICS``); works on numpy or jax arrays."""
  return {name: batch[field].mean() for name, field in BATCH_METRICS.items() if field in batch}


def _prompt_cache(tokenizer):
  """``encode_prompt`` memoised by prompt (a chat template render costs ~10 ms)."""
  cache = {}

  def encode(prompt):
    key = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)
    ids = cache.get(key)
    if ids is None:
      ids = cache[key] = np.asarray(tokenizer.encode_prompt(prompt), np.int32)
    return ids

  return encode


def _where(ex):
  return f"example {ex.get('id', '?')}"


def _row_encoder(tokenizer, max_len, truncate, completion):
  prompt_ids = _prompt_cache(tokenizer)

  def row(prompt, text, where, empty, *, completion_policy=completion,
          truncate_policy=truncate):
    if not isinstance(text, str) or not text:
      raise RowSkipped("empty_response", empty)
    return pack_row(prompt_ids(prompt), tokenizer.encode_completion(text), max_len,
                    truncate=truncate_policy, completion=completion_policy, where=where)

  return prompt_ids, row


def _finish(fn, max_len, truncate, completion):
  fn.max_len, fn.truncate, fn.completion = max_len, truncate, completion
  return fn


def encode_sft(tokenizer, max_len: int, truncate: str = "prompt_left",
               completion: str = "truncate") -> Callable:
  """example {"prompt", "response"} -> packed row (+ truncated, completion_truncated, example_mask)."""
  _, row_of = _row_encoder(tokenizer, max_len, truncate, completion)

  def fn(ex):
    where = _where(ex)
    row, cut, ccut = row_of(ex["prompt"], ex.get("response"), where,
                            f"{where}: empty 'response'")
    row["truncated"] = np.float32(cut)
    row["completion_truncated"] = np.float32(ccut)
    row["example_mask"] = np.float32(1.0)
    return row

  return _finish(fn, max_len, truncate, completion)


def encode_pair(tokenizer, max_len: int, truncate: str = "prompt_left",
                completion: str = "truncate") -> Callable:
  """example {"prompt", "chosen", "rejected"[, "alpha"]} -> chosen_* and rejected_* rows."""
  _, row_of = _row_encoder(tokenizer, max_len, truncate, completion)

  def fn(ex):
    where = _where(ex)
    out, cut, ccut = {}, False, False
    for side in ("chosen", "rejected"):
      row, c, cc = row_of(ex["prompt"], ex.get(side), f"{where} ({side})",
                          f"{where}: empty {side!r} response")
      cut, ccut = cut or c, ccut or cc
      out.update({f"{side}_{k}": v for k, v in row.items()})
    out["truncated"] = np.float32(cut)
    out["completion_truncated"] = np.float32(ccut)
    out["example_mask"] = np.float32(1.0)
    out["alpha"] = np.float32(ex.get("alpha", np.nan))
    return out

  return _finish(fn, max_len, truncate, completion)


def encode_unpaired(tokenizer, max_len: int, truncate: str = "prompt_left",
                    completion: str = "truncate") -> Callable:
  """A batch-level encoder: [{"prompt", "response", "label"}] -> response_*, kl_*, labels.

  ``kl_*`` rows pair prompt i with the response of example (i - 1) mod B of the same batch
  (a deterministic shift, as in KTO / TRL), giving the mismatched (x, y') rows of KTO's
  reference point z0. ``labels`` [B] are 1 (desirable) or 0 (undesirable). A KL row never
  drops or stops a batch: it is always cut with ``truncate="prompt_left"``,
  ``completion="truncate"`` (it only estimates z0); its cuts count in the two fractions.
  """
  _, row_of = _row_encoder(tokenizer, max_len, truncate, completion)

  def fn(exs):
    exs = list(exs)
    rows = []
    for i, ex in enumerate(exs):
      where = _where(ex)
      if ex.get("label") not in (0, 1, True, False):
        raise RowSkipped("bad_label",
                         f"{where}: 'label' must be 0/1 or a bool, got {ex.get('label')!r}")
      resp, c1, cc1 = row_of(ex["prompt"], ex.get("response"), where,
                             f"{where}: empty 'response'")
      kl, c2, cc2 = row_of(ex["prompt"], exs[(i - 1) % len(exs)].get("response"),
                           f"{where} (kl row)", f"{where}: empty kl response",
                           completion_policy="truncate",
                           truncate_policy="prompt_left")
      row = {f"response_{k}": v for k, v in resp.items()}
      row.update({f"kl_{k}": v for k, v in kl.items()})
      row["labels"] = np.float32(bool(ex["label"]))
      row["truncated"] = np.float32(c1 or c2)
      row["completion_truncated"] = np.float32(cc1 or cc2)
      row["example_mask"] = np.float32(1.0)
      rows.append(row)
    return stack(rows)

  fn.batch_level = True
  return _finish(fn, max_len, truncate, completion)


def encode_group(tokenizer, max_len: int, group_size: int, truncate: str = "prompt_left",
                 completion: str = "truncate") -> Callable:
  """example {"prompt", "chosen": [k_w], "rejected": [k_l]} -> rows [K, T] and masks [K].

  Each side is padded to ``group_size`` (K) with copies of its first sample whose mask is 0,
  so every row is a valid sequence and padded samples never count in the loss.
  """
  _, row_of = _row_encoder(tokenizer, max_len, truncate, completion)

  def fn(ex):
    where = _where(ex)
    out, cut, ccut = {}, False, False
    for side in ("chosen", "rejected"):
      group = ex.get(side)
      if isinstance(group, str) or not group:
        raise RowSkipped("bad_group", f"{where}: {side!r} must be a non-empty list of responses")
      if len(group) > group_size:
        raise RowSkipped("group_too_large", f"{where}: {len(group)} {side} samples exceed "
                         f"group_size={group_size}")
      rows = []
      for j, y in enumerate(group):
        row, c, cc = row_of(ex["prompt"], y, f"{where} ({side} {j})",
                            f"{where}: empty {side} response {j}")
        cut, ccut = cut or c, ccut or cc
        rows.append(row)
      mask = np.zeros(group_size, np.float32)
      mask[:len(rows)] = 1.0
      rows += [rows[0]] * (group_size - len(rows))
      out.update(stack(rows, prefix=f"{side}_"))
      out[f"{side}_mask"] = mask
    out["truncated"] = np.float32(cut)
    out["completion_truncated"] = np.float32(ccut)
    out["example_mask"] = np.float32(1.0)
    out["alpha"] = np.float32(ex.get("alpha", np.nan))
    return out

  return _finish(fn, max_len, truncate, completion)


# ------------------------------------------------------------------------------ filtering
def _encode_one(encode, ex):
  return encode([ex]) if getattr(encode, "batch_level", False) else encode(ex)


def _reason(err: Exception) -> str:
  """A short, countable reason: ``RowSkipped.reason``, else the message without the
  example's name and parenthesised details."""
  if isinstance(err, RowSkipped):
    return err.reason
  msg = str(err).splitlines()[0] if str(err) else type(err).__name__
  msg = re.sub(r"^example [^:]*:\s*", "", msg)
  return re.sub(r"\s*\([^()]*\)", "", msg).strip()[:120] or type(err).__name__


def filter_examples(examples: Sequence[dict], encode: Callable, *, source: str = "examples",
                    max_bad_rows: int = 10):
  """Encodes every example once; rows that cannot be used are counted, never fatal.

  A row is skipped when its encoder raises ``RowSkipped`` (empty response, completion or
  prompt that a ``"drop"`` policy refuses, bad label, bad group), ``DataError`` or another
  ``ValueError`` / ``KeyError`` / ``TypeError`` (a character the tokenizer rejects, a missing
  field). ``PolicyError`` (a length policy set to ``"error"``) is re-raised: it stops the run.

  Returns:
    ``(kept, skipped, bad_rows)``: the usable examples in order, ``{reason: count}`` and
    ``(id, message)`` of the first ``max_bad_rows`` skipped rows.

  Raises:
    DataError: no row is usable (one line naming ``source``, ``max_len`` and the top reasons).
  """
  kept, skipped, bad = [], collections.Counter(), []
  for i, ex in enumerate(examples):
    try:
      _encode_one(encode, ex)
    except PolicyError:
      raise
    except (DataError, ValueError, KeyError, TypeError) as e:
      skipped[_reason(e)] += 1
      if len(bad) < max_bad_rows:
        bad.append((ex.get("id", i) if isinstance(ex, dict) else i, str(e).splitlines()[0]))
      continue
    kept.append(ex)
  if examples and not kept:
    raise DataError(no_usable_row_message(source, skipped, getattr(encode, "max_len", None)))
  return kept, dict(skipped), bad


def no_usable_row_message(source: str, skipped: dict, max_len: int | None = None) -> str:
  top = sorted(skipped.items(), key=lambda kv: -kv[1])[:3]
  reasons = ", ".join(f"{n} {r}" for r, n in top)
  hint = ""
  if top and top[0][0] == "prompt_too_long" and max_len is not None:
    hint = (f"; max_len={max_len} is smaller than every prompt (raise data.max_len or set "
            f"data.truncate='prompt_left')")
  elif top and top[0][0] == "completion_too_long" and max_len is not None:
    hint = (f"; max_len={max_len} is smaller than every completion (raise data.max_len or "
            f"set data.completion='truncate')")
  return f"no usable row in {source}: {sum(skipped.values())} skipped ({reasons}){hint}"


def check_examples(examples: Sequence[dict], encode: Callable) -> None:
  """Encodes every example once up front so bad data fails before training starts."""
  for ex in examples:
    _encode_one(encode, ex)


# ------------------------------------------------------------------------------ buckets
def bucket_lengths(max_len: int, smallest: int = 64, per_octave: int = 2) -> tuple[int, ...]:
  """Row lengths a batch may be cut to: ``smallest``, then ``smallest * 2^i * (1 + j /
  per_octave)`` for i >= 1, j < per_octave, below ``max_len``, then ``max_len``.

  per_octave=2: 64, 128, 192, 256, 384, 512, ... (~2 log2(max_len / smallest) + 1 shapes, 8
  for 1024; a batch wastes at most a third of its row on padding); per_octave=4: 64, 128,
  160, 192, 224, 256, 320, ... (at most a fifth wasted, twice the shapes); 1: powers of two.
  ``max_len <= smallest`` gives one shape (the testbed's 32).
  """
  if per_octave < 1:
    raise ValueError(f"per_octave must be >= 1, got {per_octave}")
  lengths, base = {smallest}, 2 * smallest
  while base < max_len:
    lengths.update(base + base * j // per_octave for j in range(per_octave))
    base *= 2
  return tuple(sorted(n for n in lengths if n < max_len)) + (max_len,)


def _is_row_field(key: str) -> bool:
  return any(key == f or key.endswith("_" + f) for f in ROW_FIELDS)


def used_length(batch: dict) -> int:
  """The longest row of a batch: 1 + the last position with a nonzero segment id."""
  longest = 1
  for k, v in batch.items():
    if k == "segment_ids" or k.endswith("_segment_ids"):
      used = np.nonzero((np.asarray(v) != 0).reshape(-1, v.shape[-1]).any(axis=0))[0]
      if used.size:
        longest = max(longest, int(used[-1]) + 1)
  return longest


def bucket_batch(batch: dict, buckets: Sequence[int] | None = None) -> dict:
  """Cuts every row field (``*input_ids``, ``*loss_mask``, ... of shape ``[..., T]``) to the
  smallest bucket length >= the batch's longest row; other fields pass through."""
  keys = [k for k in batch if _is_row_field(k)]
  if not keys:
    return batch
  max_len = batch[keys[0]].shape[-1]
  buckets = bucket_lengths(max_len) if buckets is None else tuple(buckets)
  need = used_length(batch)
  length = next((b for b in sorted(buckets) if b >= need), max_len)
  if length >= max_len:
    return batch
  return {k: (v[..., :length] if k in keys else v) for k, v in batch.items()}


def batched(examples: Sequence[dict], encode: Callable, batch_size: int, *, seed: int,
            num_steps: int, shuffle: bool = True, bucket: bool = True,
            buckets: Sequence[int] | None = None) -> grain.MapDataset:
  """A random-access dataset of at least ``num_steps`` batches (epochs reshuffled together).

  With ``bucket`` (default), each batch's rows are cut to ``bucket_lengths(max_len)`` (or the
  given ``buckets``) instead of ``max_len``; the cut depends only on the batch's contents, so
  ``dataset[step]`` stays a pure function of (examples, seed, step).
  """
  if len(examples) < batch_size:
    raise DataError(f"{len(examples)} examples are fewer than one batch of {batch_size}")
  epochs = max(1, math.ceil(num_steps * batch_size / len(examples)))
  ds = grain.MapDataset.source(list(examples)).repeat(epochs)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if getattr(encode, "batch_level", False):   # the encoder sees the whole batch (KTO)
    ds = ds.batch(batch_size, drop_remainder=True, batch_fn=encode)
  else:
    ds = ds.map(encode).batch(batch_size, drop_remainder=True)
  if bucket:
    ds = ds.map(functools.partial(bucket_batch, buckets=buckets))   # picklable for workers
  return ds


def eval_batches(examples: Sequence[dict], encode: Callable, batch_size: int, *,
                 bucket: bool = True, buckets: Sequence[int] | None = None):
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
    batch = stack(chunk)
    yield bucket_batch(batch, buckets) if bucket else batch
