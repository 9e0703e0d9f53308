"""Reward-model losses: Bradley-Terry on scalar rewards, with margin and reward centering.

  loss = -log sigmoid(r_w - r_l - m) + c * (r_w + r_l)^2

m is a per-pair margin (Llama 2: larger for pairs the labeller rated as clearly better) plus a
constant ``margin``; the centering term (Eisenstein et al.) keeps the rewards of a prompt's
responses near zero, so rewards are comparable across prompts and the BT loss's shift
invariance does not let them drift.

References: Bradley & Terry (1952); Touvron et al., "Llama 2", arXiv 2307.09288 (margin);
Eisenstein et al., "Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate
Reward Hacking", arXiv 2312.09244 (centering).

Example:
  >>> losses, metrics = bradley_terry(chosen_rewards=jnp.array([1., 0.]),
  ...                                 rejected_rewards=jnp.array([0., 1.]))
  >>> losses   # [0.3133, 1.3133]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.registry import register


@register("bradley_terry", kind="reward", needs_reference=False)
def bradley_terry(*, chosen_rewards, rejected_rewards, margins=None, margin=0.0,
                  center_coef=0.0):
  """Bradley-Terry reward-model loss.

  Args:
    chosen_rewards: [B] r(x, y_w).
    rejected_rewards: [B] r(x, y_l).
    margins: optional [B] per-pair margins (added to ``margin``).
    margin: constant margin m.
    center_coef: c, the coefficient of (r_w + r_l)^2.

  Returns:
    (per-example losses [B], metrics): ``rewards/accuracies`` (r_w > r_l; a tie is wrong),
    ``rewards/margins`` (r_w - r_l), ``rewards/chosen``, ``rewards/rejected`` ([B]: averaged
    by the step over valid examples) and ``rewards/chosen_std``, ``rewards/rejected_std``
    (scalars over the batch as given).
  """
  rw = chosen_rewards.astype(jnp.float32)
  rl = rejected_rewards.astype(jnp.float32)
  m = jnp.float32(margin)
  if margins is not None:
    m = m + margins.astype(jnp.float32)
  diff = rw - rl
  losses = -jax.nn.log_sigmoid(diff - m) + center_coef * jnp.square(rw + rl)
  metrics = {"rewards/accuracies": (diff > 0).astype(jnp.float32), "rewards/margins": diff,
             "rewards/chosen": rw, "rewards/rejected": rl,
             "rewards/chosen_std": jnp.std(rw), "rewards/rejected_std": jnp.std(rl)}
  return losses, metrics
