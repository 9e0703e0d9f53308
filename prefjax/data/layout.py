"""Row layouts: plain rows, prefix-shared rows, and prefix-shared rows packed together.

A *unit* is one example laid out once: its prompt computed once, then each response as a
branch that restarts from the prompt's last token,

    input   = prompt[:-1] | p_last r1[:-1] | p_last r2[:-1] | ...
    target  = prompt[1:]  | r1             | r2             | ...
    position= 0 .. p-2    | p-1 .. p+|r1|-2| p-1 .. p+|r2|-2| ...
    branch  = 0 ...       | 1 ...          | 2 ...          | ...

with attention allowed iff k <= q, same segment, and (branch[k] == 0 or branch[k] ==
branch[q]) (prefjax.models.attention.causal_segment_mask), so response j sees exactly what it
sees in its own plain row [prompt | r_j] and its log-probs are equal. A unit needs
p - 1 + sum_j |r_j| tokens instead of sum_j (p - 1 + |r_j|).

Layouts (``make_encoder(..., layout=)``):
  * "plain": the encoders of prefjax/data/pipeline.py ({side}_* rows, one per response);
  * "prefix": one unit per row, rows = examples;
  * "packed": units packed into ``rows`` rows of ``row_len`` tokens, best-fit decreasing,
    kept apart by segment ids (``plan_batches`` fills each batch with as many examples as fit).

Batch fields of "prefix" / "packed" batches (R rows, B example slots, S response slots):
  rows_{input_ids,target_ids,loss_mask,positions,segment_ids,branch_ids} [R, T] int32;
  rows_slot_ids [R, T] int32 = example * S + slot on completion targets, -1 elsewhere;
  slot_source [B, S] int32: the slot whose sums a slot reads (padded group samples read
    sample 0 of their side, as the plain encoder's copies do);
  example_mask [B], truncated [B], and the kind's own fields (alpha [B]; chosen_mask,
  rejected_mask [B, K]; labels [B]). Slots: sft (response), pairwise (chosen, rejected),
  multi (chosen 0..K-1, rejected K..2K-1), unpaired (response, kl).
The registered forwards (prefjax/train/objective.py) detect ``rows_input_ids`` and return
the same [B] / [B, K] loss inputs as for plain batches.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import grain
import numpy as np

from prefjax.data import pipeline
from prefjax.data.collate import DataError, TRUNCATION_POLICIES, fit_lengths, stack

LAYOUTS = ("plain", "prefix", "packed")
ROW_FIELDS = ("input_ids", "target_ids", "loss_mask", "positions", "segment_ids",
              "branch_ids", "slot_ids")


def n_slots(kind: str, group_size: int | None = None) -> int:
  """Response slots S per example of a batch kind."""
  if kind == "multi":
    if not group_size:
      raise DataError("layout for 'multi' batches needs group_size")
    return 2 * group_size
  if kind in ("pairwise", "unpaired"):
    return 2
  if kind == "sft":
    return 1
  raise DataError(f"no prefix-shared layout for batch kind {kind!r}")


def cut_prompt(prompt: list, longest: int, max_len: int, truncate: str, where: str):
  """The prompt cut as ``collate.pack`` cuts it for the longest response (BOS kept).

  Returns (prompt, truncated). One cut for all responses, so the prompt stays shared (the
  plain encoders cut each side separately; they agree whenever nothing is truncated).
  """
  if truncate not in TRUNCATION_POLICIES:
    raise DataError(f"unknown truncation policy {truncate!r}; expected {TRUNCATION_POLICIES}")
  if not prompt:
    raise DataError(f"{where}: empty prompt (it must contain at least the BOS token)")
  if len(prompt) + longest - 1 <= max_len:
    return list(prompt), False
  room = max_len + 1 - longest
  if room < 1:
    raise DataError(f"{where}: completion of {longest} tokens does not fit max_len={max_len}")
  if truncate == "error":
    raise DataError(f"{where}: prompt of {len(prompt)} + completion of {longest} tokens "
                    f"exceeds max_len={max_len} (set truncate='prompt_left' to cut the prompt)")
  return list(prompt[:1]) + list(prompt[len(prompt) - room + 1:]) if room > 1 else list(prompt[:1]), True


def unit_arrays(prompt: Sequence[int], responses: Sequence[Sequence[int]],
                slots: Sequence[int], example: int, n_slot: int) -> dict:
  """The token arrays of one unit (lists of equal length, see the module docstring)."""
  p = len(prompt)
  u = {k: [] for k in ROW_FIELDS if k != "segment_ids"}
  u["input_ids"] += list(prompt[:-1])
  u["target_ids"] += list(prompt[1:])
  u["loss_mask"] += [0] * (p - 1)
  u["positions"] += list(range(p - 1))
  u["branch_ids"] += [0] * (p - 1)
  u["slot_ids"] += [-1] * (p - 1)
  for j, (resp, slot) in enumerate(zip(responses, slots)):
    n = len(resp)
    u["input_ids"] += [prompt[-1]] + list(resp[:-1])
    u["target_ids"] += list(resp)
    u["loss_mask"] += [1] * n
    u["positions"] += list(range(p - 1, p - 1 + n))
    u["branch_ids"] += [j + 1] * n
    u["slot_ids"] += [example * n_slot + slot] * n
  return u


def best_fit_decreasing(sizes: Sequence[int], capacity: int, n_bins: int | None = None):
  """Bin index per item (best fit, largest first), or None when ``n_bins`` bins don't do."""
  order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
  free: list[int] = []
  where = [0] * len(sizes)
  for i in order:
    if sizes[i] > capacity:
      return None
    fits = [b for b, f in enumerate(free) if f >= sizes[i]]
    if fits:
      b = min(fits, key=lambda b: free[b])
    elif n_bins is None or len(free) < n_bins:
      free.append(capacity)
      b = len(free) - 1
    else:
      return None
    free[b] -= sizes[i]
    where[i] = b
  return where


def _per_octave(bucket: bool | int) -> int:
  """``bucket`` as bucket lengths per octave: False/0 off, True the default 2, else n."""
  return 2 if bucket is True else int(bucket)


def rows_batch(units: Sequence[dict], n_rows: int, row_len: int, where: str = "batch",
               bucket: bool | int = False):
  """Packs units into ``n_rows`` rows of ``row_len`` tokens: rows_* arrays [R, T].

  With ``bucket`` the rows are only as long as the first of ``pipeline.bucket_lengths(row_len)``
  that the units fit (best-fit decreasing), as plain batches are cut: a batch of short
  examples is not padded to ``row_len`` (one compiled step per length used); an int
  ``bucket`` is the number of bucket lengths per octave (``pipeline.bucket_lengths``).
  """
  sizes = [len(u["input_ids"]) for u in units]
  placement = None
  per_octave = _per_octave(bucket)
  for length in (pipeline.bucket_lengths(row_len, per_octave=per_octave) if per_octave
                 else (row_len,)):
    placement = best_fit_decreasing(sizes, length, n_rows)
    if placement is not None:
      row_len = length
      break
  if placement is None:
    raise DataError(f"{where}: units of {sorted(sizes, reverse=True)} tokens do not fit "
                    f"{n_rows} rows of {row_len} (raise row_len/rows, or use plan_batches)")
  out = {f"rows_{k}": np.zeros((n_rows, row_len), np.int32) for k in ROW_FIELDS}
  out["rows_slot_ids"][:] = -1
  fill = [0] * n_rows
  for u, r in zip(units, placement):
    a, n = fill[r], len(u["input_ids"])
    for k in ROW_FIELDS:
      if k == "segment_ids":
        out["rows_segment_ids"][r, a:a + n] = out["rows_segment_ids"][r].max() + 1
      else:
        out[f"rows_{k}"][r, a:a + n] = u[k]
    fill[r] += n
  return out


def padding_fraction(batch) -> float:
  """Fraction of row positions that are padding: 1 - #(segment id != 0) / #positions.

  Counts every ``*segment_ids`` field, so it works for plain and rows_* batches alike.
  """
  keys = [k for k in batch if k.endswith("segment_ids")]
  real = sum((np.asarray(batch[k]) != 0).sum() for k in keys)
  total = sum(np.asarray(batch[k]).size for k in keys)
  return float(1.0 - real / max(total, 1))


class RowsEncoder:
  """A batch-level encoder: a list of examples -> one "prefix" / "packed" batch.

  ``n_examples`` example slots (B, the rest masked out), ``rows`` x ``row_len`` tokens.
  """
  batch_level = True

  def __init__(self, kind, tokenizer, max_len, *, rows, row_len, n_examples,
               group_size=None, truncate="prompt_left", completion="error",
               bucket: bool | int = False):
    self.kind, self.tok, self.max_len = kind, tokenizer, max_len
    self.rows, self.row_len, self.n_examples = rows, row_len, n_examples
    self.bucket = bucket
    self.group_size, self.truncate, self.completion = group_size, truncate, completion
    self.n_slot = n_slots(kind, group_size)
    self._cache: dict = {}

  def _tokens(self, ex):
    """(prompt ids, [response ids]) of one example, cached by object id.

    The cache holds the example itself, so an id is never reused while cached.
    """
    key = id(ex)
    if key not in self._cache or self._cache[key][0] is not ex:
      where = f"example {ex.get('id', '?')}"
      prompt = self.tok.encode_prompt(ex["prompt"])
      if self.kind == "sft" or self.kind == "unpaired":
        texts = [ex.get("response")]
      elif self.kind == "pairwise":
        texts = [ex.get("chosen"), ex.get("rejected")]
      else:
        texts = []
        for side in ("chosen", "rejected"):
          group = ex.get(side)
          if isinstance(group, str) or not group:
            raise DataError(f"{where}: {side!r} must be a non-empty list of responses")
          if len(group) > self.group_size:
            raise DataError(f"{where}: {len(group)} {side} samples exceed "
                            f"group_size={self.group_size}")
          texts.append(list(group))
      if self.kind == "unpaired" and ex.get("label") not in (0, 1, True, False):
        raise DataError(f"{where}: 'label' must be 0/1 or a bool, got {ex.get('label')!r}")
      flat = [t for x in texts for t in (x if isinstance(x, list) else [x])]
      if any(not t for t in flat):
        raise DataError(f"{where}: empty response")
      fit = lambda t: self._fit(prompt, self.tok.encode_completion(t), where)
      enc = [[fit(t) for t in x] if isinstance(x, list) else fit(x) for x in texts]
      self._cache[key] = (ex, prompt, enc)
    return self._cache[key][1:]

  def _fit(self, prompt, ids, where):
    """A response cut (from its end) as ``collate.pack`` cuts it under the completion policy
    (``fit_lengths``); "drop" / "error" raise as the plain encoders do."""
    _, c = fit_lengths(len(prompt), len(ids), self.max_len, truncate=self.truncate,
                       completion=self.completion, where=where)
    return ids[:c]

  def _unit(self, exs, i):
    """(unit arrays, slot_source [S], truncated) of example i within the batch ``exs``."""
    ex = exs[i]
    prompt, enc = self._tokens(ex)
    s = self.n_slot
    if self.kind == "multi":
      k = self.group_size
      responses, slots, src = [], [], list(range(s))
      for side, group in enumerate(enc):
        base = side * k
        responses += group
        slots += [base + j for j in range(len(group))]
        src[base + len(group):base + k] = [base] * (k - len(group))
    elif self.kind == "unpaired":   # kl row: the response of example (i - 1) mod n
      responses, slots, src = [enc[0], self._tokens(exs[(i - 1) % len(exs)])[1][0]], [0, 1], [0, 1]
    else:
      responses, slots, src = list(enc), list(range(s)), list(range(s))
    where = f"example {ex.get('id', '?')}"
    prompt, cut = cut_prompt(prompt, max(map(len, responses)), self.max_len, self.truncate,
                             where)
    return unit_arrays(prompt, responses, slots, i, s), src, cut

  def unit_sizes(self, exs) -> list[int]:
    return [len(self._unit(exs, i)[0]["input_ids"]) for i in range(len(exs))]

  def fits(self, exs) -> bool:
    return (len(exs) <= self.n_examples and
            best_fit_decreasing(self.unit_sizes(exs), self.row_len, self.rows) is not None)

  def __call__(self, exs):
    exs = list(exs)
    if len(exs) > self.n_examples:
      raise DataError(f"{len(exs)} examples exceed the batch's {self.n_examples} slots")
    b, s = self.n_examples, self.n_slot
    units, srcs, cuts = zip(*(self._unit(exs, i) for i in range(len(exs))))
    out = rows_batch(units, self.rows, self.row_len, bucket=self.bucket)
    out["slot_source"] = np.tile(np.arange(s, dtype=np.int32), (b, 1))
    out["slot_source"][:len(exs)] = np.asarray(srcs, np.int32)
    out["example_mask"] = (np.arange(b) < len(exs)).astype(np.float32)
    out["truncated"] = np.zeros(b, np.float32)
    out["truncated"][:len(exs)] = cuts
    if self.kind in ("pairwise", "multi"):
      out["alpha"] = np.full(b, np.nan, np.float32)
      out["alpha"][:len(exs)] = [ex.get("alpha", np.nan) for ex in exs]
    if self.kind == "multi":
      k = self.group_size
      for side, name in enumerate(("chosen", "rejected")):
        m = np.zeros((b, k), np.float32)
        m[len(exs):, 0] = 1.0     # empty example slots: one valid (all-zero) sample, no NaN
        for i, ex in enumerate(exs):
          m[i, :len(ex[name])] = 1.0
        out[f"{name}_mask"] = m
    if self.kind == "unpaired":
      out["labels"] = np.zeros(b, np.float32)
      out["labels"][:len(exs)] = [float(bool(ex["label"])) for ex in exs]
    return out


def make_encoder(kind: str, tokenizer, max_len: int, *, layout: str = "plain",
                 group_size: int | None = None, truncate: str = "prompt_left",
                 batch_size: int | None = None, rows: int | None = None,
                 row_len: int | None = None, completion: str = "truncate",
                 bucket: bool | int = False) -> Callable:
  """The encoder of batch ``kind`` in ``layout`` (see the module docstring).

  "plain" returns pipeline's encoders unchanged. "prefix" and "packed" return a
  ``RowsEncoder`` (batch-level: ``pipeline.batched`` hands it whole batches) with
  ``batch_size`` example slots; "prefix" uses one row per example of ``row_len`` tokens
  (default S * max_len, always enough), "packed" ``rows`` rows (default ceil(batch_size / 2))
  of ``row_len`` (default 2 * max_len) tokens; with ``bucket`` each batch's rows are cut to
  the shortest of ``pipeline.bucket_lengths(row_len)`` its units fit (an int: that many
  lengths per octave).
  """
  if layout not in LAYOUTS:
    raise DataError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
  if layout == "plain":
    if kind == "sft":
      return pipeline.encode_sft(tokenizer, max_len, truncate, completion=completion)
    if kind == "pairwise":
      return pipeline.encode_pair(tokenizer, max_len, truncate, completion=completion)
    if kind == "multi":
      return pipeline.encode_group(tokenizer, max_len, group_size, truncate, completion=completion)
    if kind == "unpaired":
      return pipeline.encode_unpaired(tokenizer, max_len, truncate, completion=completion)
    raise DataError(f"no encoder for batch kind {kind!r}")
  if not batch_size:
    raise DataError(f"layout {layout!r} needs batch_size (example slots per batch)")
  s = n_slots(kind, group_size)
  if layout == "prefix":
    return RowsEncoder(kind, tokenizer, max_len, rows=batch_size, row_len=row_len or s * max_len,
                       n_examples=batch_size, group_size=group_size, truncate=truncate,
                       completion=completion, bucket=bucket)
  return RowsEncoder(kind, tokenizer, max_len, rows=rows or math.ceil(batch_size / 2),
                     row_len=row_len or 2 * max_len, n_examples=batch_size,
                     group_size=group_size, truncate=truncate, completion=completion,
                     bucket=bucket)


def plan(examples: Sequence[dict], encoder: RowsEncoder) -> list[list[int]]:
  """Consecutive groups of ``examples`` indices, each as many as fit one batch.

  Greedy in the given order: an example joins the current batch while the batch's units
  still fit ``encoder.rows`` rows (best-fit decreasing) and ``encoder.n_examples`` slots.
  """
  groups, cur = [], []
  for i in range(len(examples)):
    if cur and not encoder.fits([examples[j] for j in cur + [i]]):
      groups.append(cur)
      cur = []
    if not encoder.fits([examples[i]]):
      raise DataError(f"example {examples[i].get('id', i)} alone does not fit "
                      f"{encoder.rows} rows of {encoder.row_len} tokens")
    cur.append(i)
  if cur:
    groups.append(cur)
  return groups


def plan_batches(examples: Sequence[dict], encoder: RowsEncoder, *, seed: int,
                 num_steps: int, shuffle: bool = True) -> grain.MapDataset:
  """A random-access dataset of at least ``num_steps`` packed batches (epochs reshuffled).

  Each epoch is a seeded permutation of ``examples`` cut by ``plan``; batches hold a varying
  number of examples (``example_mask``), a pure function of (examples, seed, step).
  """
  groups, epoch = [], 0
  while len(groups) < num_steps or epoch == 0:
    order = np.arange(len(examples))
    if shuffle:
      order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    exs = [examples[i] for i in order]
    groups += [[int(order[j]) for j in g] for g in plan(exs, encoder)]
    epoch += 1
  return grain.MapDataset.source(groups).map(lambda g: encoder([examples[i] for i in g]))
