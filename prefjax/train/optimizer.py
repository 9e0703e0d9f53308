"""AdamW with linear warmup, cosine decay and global-norm clipping."""
from __future__ import annotations

import jax
import optax


def make_schedule(lr: float, total_steps: int, warmup_steps: int, final_lr_fraction: float = 0.1):
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * final_lr_fraction)


def make_optimizer(lr: float, total_steps: int, *, warmup_steps: int = 0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.95, clip_norm: float = 1.0,
                   final_lr_fraction: float = 0.1):
  """Returns (optax transformation, schedule). Weight decay skips vectors (norms, biases)."""
  schedule = make_schedule(lr, total_steps, warmup_steps, final_lr_fraction)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  tx = optax.chain(
      optax.clip_by_global_norm(clip_norm),
      optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask),
  )
  return tx, schedule
