"""Supervised fine-tuning: token negative log-likelihood."""
from __future__ import annotations

import jax.numpy as jnp

from prefjax.losses.registry import register


@register("sft", kind="sft", needs_reference=False)
def sft(*, policy_logps, lengths):
  """Negative log-likelihood of the completion, per example.

  loss_i = -sum_t log pi(y_t | x, y_<t), summed over completion tokens.

  The step divides the sum of per-example losses by the sum of ``lengths`` when
  ``objective.per_token=True`` (the usual token-mean NLL, exact under any batching).

  Args:
    policy_logps: ``[B]`` summed completion log-probs under the policy.
    lengths: ``[B]`` completion token counts.

  Returns:
    ``([B] losses, metrics)`` with ``nll/per_token`` (``[B]``).
  """
  nll = -policy_logps
  per_token = nll / jnp.maximum(lengths, 1)
  return nll, {"nll/per_token": per_token}
