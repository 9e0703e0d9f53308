"""Alignment via Optimal Transport (AOT): distributional preference losses by sorting.

AOT asks that the distribution of chosen rewards dominate that of rejected rewards in the
first order (stochastic dominance), not pair by pair. In one dimension the optimal transport
plan between two empirical distributions matches their sorted samples, so the loss is a
logistic loss on the differences of the *sorted* quantities, quantile by quantile.

Both losses couple the examples of a batch through the sort: entry i of the returned
``[B]`` array is the loss of the i-th quantile, not of example i. Padded rows would enter
the sort, so feed these losses batches without padding rows. Gradients flow through
``jnp.sort`` (a permutation) to the examples that occupy each quantile.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.dpo import pairwise_metrics
from prefjax.losses.registry import register


def _smoothed_logistic(z, label_smoothing):
  # softplus(-z) = -log sigmoid(z): stable for |z| ~ 1e3.
  return (1.0 - label_smoothing) * jax.nn.softplus(-z) + label_smoothing * jax.nn.softplus(z)


@register("aot")
def aot(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_lengths=None, rejected_lengths=None, beta=0.1, label_smoothing=0.0):
  """AOT for paired data: the policy's margins must dominate the reference's margins.

  With the per-pair margins u_i = log pi(y_w|x) - log pi(y_l|x) and
  v_i = log pi_ref(y_w|x) - log pi_ref(y_l|x), sorted over the batch (ascending):

    delta_(i) = u_(i) - v_(i)
    loss_(i) = -(1 - eps) log sigmoid(beta delta_(i)) - eps log sigmoid(-beta delta_(i))

  With B = 1 (no sorting) it is DPO. This is TRL's ``loss_type="aot"`` (TRL's name for the
  unpaired variant is ``aot_pair``, see ``aot_unpaired``).

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature.
    label_smoothing: eps, as in cDPO.

  Returns:
    ``([B] per-quantile losses, metrics)``: the ``pairwise_metrics`` (per example, unsorted)
    and ``aot/sorted_margins`` = beta * delta (per quantile).

  Example:
    >>> aot(policy_chosen_logps=jnp.array([0., -3.]), policy_rejected_logps=jnp.array([-1., 0.]),
    ...     ref_chosen_logps=jnp.zeros(2), ref_rejected_logps=jnp.zeros(2), beta=1.0)[0]
    ... # u sorted = [-3, 1], v sorted = [0, 0]: [-log sigmoid(-3), -log sigmoid(1)]

  References:
    Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport",
    arXiv 2406.05882; TRL ``loss_type="aot"``.
  """
  del chosen_lengths, rejected_lengths
  u = jnp.sort(policy_chosen_logps - policy_rejected_logps, axis=0)
  v = jnp.sort(ref_chosen_logps - ref_rejected_logps, axis=0)
  z = beta * (u - v)
  metrics = pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)
  metrics["aot/sorted_margins"] = jax.lax.stop_gradient(z)
  return _smoothed_logistic(z, label_smoothing), metrics


@register("aot_unpaired")
def aot_unpaired(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1,
                 label_smoothing=0.0):
  """AOT for unpaired data: chosen log-ratios must dominate rejected log-ratios.

  With r_w = log pi(y_w|x) - log pi_ref(y_w|x) and r_l likewise, each sorted over the
  batch on its own (so y_w and y_l need not share a prompt):

    delta_(i) = r_w,(i) - r_l,(i)
    loss_(i) = -(1 - eps) log sigmoid(beta delta_(i)) - eps log sigmoid(-beta delta_(i))

  This is TRL's ``loss_type="aot_pair"``, which TRL's docs describe as "for unpaired datasets".

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature.
    label_smoothing: eps, as in cDPO.

  Returns:
    ``([B] per-quantile losses, metrics)``: the ``pairwise_metrics`` (per example, unsorted)
    and ``aot/sorted_margins`` = beta * delta (per quantile).

  Example:
    >>> aot_unpaired(policy_chosen_logps=jnp.array([2., -1.]),
    ...              policy_rejected_logps=jnp.array([0., 1.]),
    ...              ref_chosen_logps=jnp.zeros(2), ref_rejected_logps=jnp.zeros(2), beta=1.0)[0]
    ... # r_w sorted = [-1, 2], r_l sorted = [0, 1]: [-log sigmoid(-1), -log sigmoid(1)]

  References:
    Melnyk et al., "Distributional Preference Alignment of LLMs via Optimal Transport",
    arXiv 2406.05882; TRL ``loss_type="aot_pair"``.
  """
  del chosen_lengths, rejected_lengths
  r_w = jnp.sort(policy_chosen_logps - ref_chosen_logps, axis=0)
  r_l = jnp.sort(policy_rejected_logps - ref_rejected_logps, axis=0)
  z = beta * (r_w - r_l)
  metrics = pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)
  metrics["aot/sorted_margins"] = jax.lax.stop_gradient(z)
  return _smoothed_logistic(z, label_smoothing), metrics
