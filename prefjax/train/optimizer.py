"""AdamW with linear warmup, cosine decay and global-norm clipping.

Optimizer state: AdamW keeps two moments per parameter, 8 bytes per parameter in float32
(next to the parameters' own 4). ``opt_state_dtype="bfloat16"`` stores both moments in
bfloat16 (4 bytes per parameter); each update still computes in float32 (the moments are
read, updated and divided in float32, then rounded when stored). With b2 close to 1 the
second moment's step (1 - b2) approaches bfloat16's resolution (2^-8 relative): at the
default b2 = 0.95 each step moves it by 5%, well above that.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from prefjax.errors import ConfigError

OPT_STATE_DTYPES = ("float32", "bfloat16")


def make_schedule(lr: float, total_steps: int, warmup_steps: int, final_lr_fraction: float = 0.1):
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  if warmup_steps == 0:          # the same values, without optax's zero-length-warmup notice
    return optax.cosine_decay_schedule(lr, max(total_steps, 1), alpha=final_lr_fraction)
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


def scale_by_adam_in(dtype, *, b1: float, b2: float) -> optax.GradientTransformation:
  """``optax.scale_by_adam`` with both moments (mu and nu) stored in ``dtype``.

  optax's ``mu_dtype`` covers the first moment only; the second is created like the
  parameters and kept in the dtype it was created in, so casting it once at init keeps it
  in ``dtype`` for every update.
  """
  inner = optax.scale_by_adam(b1=b1, b2=b2, mu_dtype=dtype)

  def init(params):
    state = inner.init(params)
    return state._replace(nu=optax.tree.cast(state.nu, dtype))

  return optax.GradientTransformation(init, inner.update)


def make_optimizer(lr: float, total_steps: int, *, warmup_steps: int = 0, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.95, clip_norm: float = 1.0,
                   final_lr_fraction: float = 0.1,
                   lr_multipliers: Mapping[str, float] | None = None,
                   opt_state_dtype: str | None = None):
  """Returns (optax transformation, schedule). Weight decay skips vectors (norms, biases).
  ``lr_multipliers`` scales the lr of named top-level parameter groups (``scale_by_path``).
  ``opt_state_dtype``: "bfloat16" stores both Adam moments in bfloat16 (half the optimizer
  state); None or "float32" keeps them float32 (for float32 parameters)."""
  schedule = make_schedule(lr, total_steps, warmup_steps, final_lr_fraction)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  if opt_state_dtype in (None, "", "float32"):
    adamw = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)
  elif opt_state_dtype in OPT_STATE_DTYPES:
    adamw = optax.chain(scale_by_adam_in(jnp.dtype(opt_state_dtype), b1=b1, b2=b2),
                        optax.add_decayed_weights(weight_decay, decay_mask),
                        optax.scale_by_learning_rate(schedule))
  else:
    raise ConfigError(f"opt_state_dtype must be one of {', '.join(OPT_STATE_DTYPES)}, "
                      f"got {opt_state_dtype!r}")
  parts = [optax.clip_by_global_norm(clip_norm), adamw]
  if lr_multipliers:
    parts.append(scale_by_path(lr_multipliers))
  return optax.chain(*parts), schedule
