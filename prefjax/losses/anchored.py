"""Anchored losses: each response's own log-ratio is pushed against a fixed anchor.

DPO only constrains the *difference* of the two log-ratios, so both likelihoods can fall
together. These losses also act on each implicit reward r(y) = beta * log(pi(y|x)/pi_ref(y|x))
on its own, anchoring it to 0 (NCA, APO) or to a running reward mean delta (BCO): they can
require the chosen likelihood to rise (NCA, APO-zero, BCO) or both to fall (APO-down).

Every function here takes the pairwise batch of ``registry.py`` (``[B]`` summed completion
log-probs and token counts) and returns ``([B] losses, metrics)``. ``1 - sigmoid(x)`` is
always computed as ``sigmoid(-x)`` and ``-log sigmoid(x)`` as ``softplus(-x)``, so nothing
cancels or overflows for log-ratios of magnitude 1e3.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.dpo import implicit_reward, pairwise_metrics
from prefjax.losses.registry import register


def _rewards(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps):
  return (implicit_reward(policy_chosen_logps, ref_chosen_logps, beta),
          implicit_reward(policy_rejected_logps, ref_rejected_logps, beta))


@register("nca_pair")
def nca_pair(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1):
  """NCA (pairwise): noise-contrastive alignment on each response's implicit reward.

  r_w = beta * log(pi(y_w|x) / pi_ref(y_w|x)),  r_l likewise
  loss = -log sigmoid(r_w) - 1/2 log sigmoid(-r_w) - 1/2 log sigmoid(-r_l)

  The first term raises the chosen reward in absolute terms (not only relative to the
  rejected one), which keeps the chosen likelihood from decreasing. At policy == reference,
  loss = 2 log 2.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature of the implicit reward.

  Returns:
    ``([B] losses, metrics)`` with the ``pairwise_metrics``.

  Example:
    >>> z = jnp.zeros(1)
    >>> nca_pair(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...          ref_rejected_logps=z)[0]   # [2 log 2]

  References:
    Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arXiv 2402.05369; TRL ``loss_type="nca_pair"``.
  """
  del chosen_lengths, rejected_lengths
  r_w, r_l = _rewards(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                      ref_rejected_logps)
  losses = jax.nn.softplus(-r_w) + 0.5 * jax.nn.softplus(r_w) + 0.5 * jax.nn.softplus(r_l)
  return losses, pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                                  ref_chosen_logps, ref_rejected_logps)


@register("bco_pair")
def bco_pair(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1,
             delta=0.0):
  """BCO (pairwise): a binary classifier with chosen = 1, rejected = 0 on shifted rewards.

  r_w = beta * log(pi(y_w|x) / pi_ref(y_w|x)),  r_l likewise
  loss = -log sigmoid(r_w - delta) - log sigmoid(-(r_l - delta))

  delta is BCO's reward shift, in the paper and TRL a running mean of the batch-mean reward
  (r_w + r_l) / 2. This function is pure: the caller keeps the running mean and passes it as
  ``delta`` (a scalar, or ``[B]``); the metric ``bco/rewards_mean`` (per example, averaged
  by the step) is the batch mean to feed it. delta is treated as a constant (detached).

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature of the implicit reward.
    delta: the reward shift (running mean of rewards); 0 by default.

  Returns:
    ``([B] losses, metrics)``: the ``pairwise_metrics`` and ``bco/rewards_mean``
    = (r_w + r_l) / 2 (``[B]``, detached).

  Example:
    >>> z = jnp.zeros(1)
    >>> bco_pair(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...          ref_rejected_logps=z)[0]   # [2 log 2]

  References:
    Jung et al., "Binary Classifier Optimization for Large Language Model Alignment",
    arXiv 2404.04656; TRL ``loss_type="bco_pair"``.
  """
  del chosen_lengths, rejected_lengths
  delta = jax.lax.stop_gradient(jnp.asarray(delta))
  r_w, r_l = _rewards(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                      ref_rejected_logps)
  losses = jax.nn.softplus(-(r_w - delta)) + jax.nn.softplus(r_l - delta)
  metrics = pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)
  metrics["bco/rewards_mean"] = jax.lax.stop_gradient(0.5 * (r_w + r_l))
  return losses, metrics


@register("apo_zero")
def apo_zero(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1):
  """APO-zero: raise the chosen likelihood and lower the rejected one, each against 0.

  r_w = beta * log(pi(y_w|x) / pi_ref(y_w|x)),  r_l likewise
  loss = (1 - sigmoid(r_w)) + sigmoid(r_l)

  For data whose chosen answers are better than the model's own outputs. Bounded in [0, 2];
  at policy == reference, loss = 1.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature of the implicit reward.

  Returns:
    ``([B] losses, metrics)`` with the ``pairwise_metrics``.

  Example:
    >>> z = jnp.zeros(1)
    >>> apo_zero(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...          ref_rejected_logps=z)[0]   # [1.]

  References:
    D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions:
    Addressing Underspecification in Alignment", arXiv 2408.06266 (eq. 7);
    TRL ``loss_type="apo_zero"``.
  """
  del chosen_lengths, rejected_lengths
  r_w, r_l = _rewards(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                      ref_rejected_logps)
  losses = jax.nn.sigmoid(-r_w) + jax.nn.sigmoid(r_l)
  return losses, pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                                  ref_chosen_logps, ref_rejected_logps)


@register("apo_down")
def apo_down(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1):
  """APO-down: lower the chosen likelihood, and the rejected one more.

  r_w = beta * log(pi(y_w|x) / pi_ref(y_w|x)),  r_l likewise
  loss = sigmoid(r_w) + (1 - sigmoid(r_w - r_l))

  For data whose chosen answers are still worse than the model's own outputs. Bounded in
  [0, 2]; at policy == reference, loss = 1.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature of the implicit reward.

  Returns:
    ``([B] losses, metrics)`` with the ``pairwise_metrics``.

  Example:
    >>> z = jnp.zeros(1)
    >>> apo_down(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...          ref_rejected_logps=z)[0]   # [1.]

  References:
    D'Oosterlinck et al., "Anchored Preference Optimization and Contrastive Revisions:
    Addressing Underspecification in Alignment", arXiv 2408.06266 (eq. 8);
    TRL ``loss_type="apo_down"``.
  """
  del chosen_lengths, rejected_lengths
  r_w, r_l = _rewards(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                      ref_rejected_logps)
  losses = jax.nn.sigmoid(r_w) + jax.nn.sigmoid(-(r_w - r_l))
  return losses, pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                                  ref_chosen_logps, ref_rejected_logps)
