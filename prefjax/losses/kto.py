"""Kahneman-Tversky Optimization (KTO): preference learning from unpaired binary feedback.

Each example is a single response labelled desirable (1) or undesirable (0); there is no
rejected partner. The batch is of kind "unpaired": ``policy_logps, ref_logps, labels,
policy_kl_logps, ref_kl_logps, lengths`` (all ``[B]``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.registry import register


@register("kto", kind="unpaired")
def kto(*, policy_logps, ref_logps, labels, policy_kl_logps, ref_kl_logps, lengths=None,
        beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
  """KTO loss: a sigmoid value function of the implicit reward against a KL reference point.

  r = log pi(y|x) - log pi_ref(y|x)
  z0 = stop_gradient(max(0, mean_B[log pi(y'|x) - log pi_ref(y'|x)]))
  loss = w_d * (1 - sigmoid(beta * (r - z0)))   if y is desirable (label 1)
         w_u * (1 - sigmoid(beta * (z0 - r)))   if y is undesirable (label 0)

  z0 estimates KL(pi || pi_ref) from mismatched pairs (x, y') (the response of another
  example in the batch), as in the paper and TRL: a batch mean, clamped at 0 (a KL is
  non-negative), and detached, so no gradient flows into ``policy_kl_logps``. Because z0 is
  a mean over the whole ``[B]`` batch, padded rows must not be included.
  1 - sigmoid(x) is computed as sigmoid(-x) (no cancellation as sigmoid(x) -> 1).

  Args:
    policy_logps: ``[B]`` summed completion log-probs of each example's response.
    ref_logps: ``[B]`` the same under the reference model.
    labels: ``[B]`` 1 (or True) for desirable, 0 for undesirable.
    policy_kl_logps, ref_kl_logps: ``[B]`` log-probs of mismatched prompt/response pairs.
    lengths: ``[B]`` token counts (unused; part of the convention).
    beta: inverse temperature of the implicit reward.
    desirable_weight, undesirable_weight: lambda_D and lambda_U; the paper recommends
      lambda_D n_D / (lambda_U n_U) in [1, 4/3] for n_D desirable and n_U undesirable examples.

  Returns:
    ``([B] losses, metrics)``: ``rewards/accuracies`` (``[B]``, 1 if the reward is on the
    label's side of z0), ``logps/policy`` (``[B]``); scalars ``kl`` (z0),
    ``rewards/desirable`` and ``rewards/undesirable`` (mean beta * r over each label's
    examples in the batch; 0 when there are none).

  Example:
    >>> z = jnp.zeros(2)
    >>> kto(policy_logps=z, ref_logps=z, labels=jnp.array([1., 0.]), policy_kl_logps=z,
    ...     ref_kl_logps=z)[0]   # [0.5, 0.5]

  References:
    Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv 2402.01306; TRL ``KTOTrainer``.
  """
  del lengths
  sg = jax.lax.stop_gradient
  z0 = sg(jnp.maximum(jnp.mean(policy_kl_logps - ref_kl_logps), 0.0))
  r = policy_logps - ref_logps
  desirable = jnp.asarray(labels) > 0.5
  loss_d = desirable_weight * jax.nn.sigmoid(-beta * (r - z0))
  loss_u = undesirable_weight * jax.nn.sigmoid(-beta * (z0 - r))
  losses = jnp.where(desirable, loss_d, loss_u)

  rewards = sg(beta * r)
  d = desirable.astype(jnp.float32)
  n_d, n_u = jnp.sum(d), jnp.sum(1.0 - d)
  metrics = {
      "kl": z0,
      "rewards/desirable": jnp.sum(rewards * d) / jnp.maximum(n_d, 1.0),
      "rewards/undesirable": jnp.sum(rewards * (1.0 - d)) / jnp.maximum(n_u, 1.0),
      "rewards/accuracies": jnp.where(desirable, sg(r) > z0, sg(r) < z0).astype(jnp.float32),
      "logps/policy": sg(policy_logps),
  }
  return losses, metrics
