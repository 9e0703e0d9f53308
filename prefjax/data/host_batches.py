"""Per-host batches: each process encodes only the rows of a global batch its devices hold.

  batches, n = local_batches(examples, encode, 32, seed=0, num_steps=100, sharding=batch_sh)
  batch = distributed.host_batch(batches[step], batch_sh, n)   # one global jax.Array batch

With one process it is ``pipeline.batched`` itself.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import grain
import jax
from jax.sharding import Sharding

from prefjax import distributed
from prefjax.data import pipeline


class LocalBatches:
  """``batches[step]`` with only this process's rows encoded (a global batch is the same
  shuffled examples as ``pipeline.batched``; this host encodes rows [lo, hi) of each).

  Wraps a random-access dataset of *raw example lists* (``grain.MapDataset.batch`` without
  encoding) and an encoder; pass ``global_batch_size`` to ``distributed.host_batch``.
  """

  def __init__(self, raw_batches, encode: Callable, rows: tuple[int, int]):
    self.raw, self.encode, self.rows = raw_batches, encode, rows

  def __len__(self):
    return len(self.raw)

  def __getitem__(self, step: int):
    examples = list(self.raw[step])
    lo, hi = self.rows
    if getattr(self.encode, "batch_level", False):   # the encoder needs the whole batch
      return {k: v[lo:hi] for k, v in self.encode(examples).items()}
    return pipeline.stack([self.encode(ex) for ex in examples[lo:hi]])


def local_batches(examples: Sequence[dict], encode: Callable, batch_size: int, *, seed: int,
                  num_steps: int, sharding: Sharding, shuffle: bool = True):
  """Like ``pipeline.batched`` but each process encodes only its rows of every batch.

  Returns ``(batches, global_batch_size)``; feed
  ``distributed.host_batch(batches[i], sharding, global_batch_size)``. With one process (or a non-contiguous layout) it is
  ``pipeline.batched`` itself.
  """
  full = pipeline.batched(examples, encode, batch_size, seed=seed, num_steps=num_steps,
                          shuffle=shuffle)
  rows = distributed.process_rows(batch_size, sharding)
  if jax.process_count() == 1 or rows is None:
    return full, batch_size
  epochs = max(1, math.ceil(num_steps * batch_size / len(examples)))
  ds = grain.MapDataset.source(list(examples)).repeat(epochs)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  raw = ds.batch(batch_size, drop_remainder=True, batch_fn=list)
  return LocalBatches(raw, encode, rows), batch_size
