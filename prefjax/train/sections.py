"""The optimisation fields every training stage's config section shares."""
from __future__ import annotations

import ml_collections


def train_section(steps, batch_size, lr, warmup):
  """A training stage's optimisation fields. ``batch_size`` is per micro-batch; with
  ``accum_steps`` = k the optimiser sees k * batch_size examples per step (exact
  gradient accumulation). ``lr_multipliers`` scales the lr of top-level parameter groups,
  e.g. ``{"head": 100.0}`` for a reward model's zero-initialised scalar head.
  ``opt_state_dtype``: "bfloat16" stores both Adam moments in bfloat16 (4 instead of 8
  bytes per parameter); "" = float32."""
  return ml_collections.ConfigDict(dict(
      steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, weight_decay=0.0,
      b1=0.9, b2=0.95, clip_norm=1.0, final_lr_fraction=0.1, accum_steps=1,
      lr_multipliers=ml_collections.ConfigDict(), opt_state_dtype=""))
