"""AdamW with linear warmup, cosine decay and global-norm clipping."""
from __future__ import annotations

from typing import Mapping

import jax
import optax


def make_schedule(lr: float, total_steps: int, warmup_steps: int, final_lr_fraction: float = 0.1):
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * final_lr_fraction)


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def scale_by_path(multipliers: Mapping[str, float]) -> optax.GradientTransformation:
  """Multiplies the update of every parameter under a top-level name in ``multipliers``
  (e.g. ``{"head": 100.0}``: the reward head learns at 100x the stage's lr)."""
  multipliers = {str(k): float(v) for k, v in dict(multipliers).items()}

  def update(updates, state, params=None):
    del params
    def scale(path, u):
      m = multipliers.get(_key_name(path[0]), 1.0) if path else 1.0
      return u if m == 1.0 else u * m
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(lr: float, total_steps: int, *, warmup_steps: int = 0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.95, clip_norm: float = 1.0,
                   final_lr_fraction: float = 0.1,
                   lr_multipliers: Mapping[str, float] | None = None):
  """Returns (optax transformation, schedule). Weight decay skips vectors (norms, biases).
  ``lr_multipliers`` scales the lr of named top-level parameter groups (``scale_by_path``)."""
  schedule = make_schedule(lr, total_steps, warmup_steps, final_lr_fraction)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  parts = [optax.clip_by_global_norm(clip_norm),
           optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)]
  if lr_multipliers:
    parts.append(scale_by_path(lr_multipliers))
  return optax.chain(*parts), schedule
