"""DPO variants that reshape the logistic loss on the DPO logit.

All of them start from the DPO logit of a pair,

  h = beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))],

(or a close relative of it: length-normalised, or with an attenuated reference) and differ in
the function of ``h`` they minimise: a debiased noisy-label loss (rDPO), a reverse-KL loss
(EXO), a logistic/exponential blend (DiscoPOP), the plain logistic loss on a length-normalised
logit (``sigmoid_norm``) or on a logit with a scaled reference (``dpo_gamma``).

Every function here takes the pairwise batch of ``registry.py`` (``[B]`` summed completion
log-probs and token counts) and returns ``([B] losses, metrics)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.dpo import pairwise_metrics, reward_metrics
from prefjax.losses.registry import register


def _check(name, value, ok, what):
  """Validates a Python-number hyper-parameter (traced values are not checked)."""
  if isinstance(value, (int, float)) and not ok(value):
    raise ValueError(f"{name}={value!r}: expected {what}")


def _dpo_logits(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                ref_rejected_logps):
  return beta * ((policy_chosen_logps - ref_chosen_logps)
                 - (policy_rejected_logps - ref_rejected_logps))


@register("rdpo")
def rdpo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
         chosen_lengths=None, rejected_lengths=None, beta=0.1, label_smoothing=0.0):
  """Robust DPO: an unbiased estimate of the clean DPO loss under flipped labels.

  With each label flipped independently with probability eps < 1/2 and h the DPO logit,
  l(h) = -log sigmoid(h) the clean loss:

    loss = [(1 - eps) * l(h) - eps * l(-h)] / (1 - 2 eps)

  so that E_flip[loss] equals the clean-label DPO loss. Unlike cDPO (``dpo`` with
  ``label_smoothing``) it is unbounded below: as h -> +inf, loss ~ -eps h / (1 - 2 eps).
  eps = 0 is DPO. Uses softplus(-h) = -log sigmoid(h), stable for |h| ~ 1e3.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature of the implicit reward.
    label_smoothing: eps in [0, 1/2), the assumed label-flip rate.

  Returns:
    ``([B] losses, metrics)`` with the ``pairwise_metrics``.

  Example:
    >>> z = jnp.zeros(2)
    >>> rdpo(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...      ref_rejected_logps=z, label_smoothing=0.1)[0]   # [log 2, log 2]

  References:
    Chowdhury et al., "Provably Robust DPO: Aligning Language Models with Noisy Feedback",
    arXiv 2403.00409; TRL ``loss_type="robust"``.
  """
  del chosen_lengths, rejected_lengths
  _check("label_smoothing", label_smoothing, lambda e: 0 <= e < 0.5, "0 <= eps < 0.5")
  h = _dpo_logits(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                  ref_rejected_logps)
  eps = label_smoothing
  losses = ((1.0 - eps) * jax.nn.softplus(-h) - eps * jax.nn.softplus(h)) / (1.0 - 2.0 * eps)
  return losses, pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                                  ref_chosen_logps, ref_rejected_logps)


@register("dpo_gamma")
def dpo_gamma(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
              ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1,
              gamma=1.0):
  """DPO with an attenuated reference model: the reference log-probs are scaled by gamma.

  h = beta * [(log pi(y_w|x) - gamma * log pi_ref(y_w|x))
              - (log pi(y_l|x) - gamma * log pi_ref(y_l|x))]
  loss = -log sigmoid(h)

  gamma = 1 is DPO; gamma = 0 drops the reference (a reference-free logistic loss on
  beta * (log pi(y_w) - log pi(y_l))). A gamma < 1 weakens the pull of the reference model's
  own ranking, which the paper identifies as what keeps DPO from flipping mis-ranked pairs.
  The rewards/* metrics use the reward this loss optimizes,
  beta * (log pi(y) - gamma * log pi_ref(y)).

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature of the implicit reward.
    gamma: the reference coefficient (1 = DPO).

  Returns:
    ``([B] losses, metrics)``.

  Example:
    >>> z = jnp.zeros(2)
    >>> dpo_gamma(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z - 1.0,
    ...           ref_rejected_logps=z, gamma=0.5)[0]   # -log sigmoid(0.05)

  References:
    Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings",
    arXiv 2405.19534 (section 5).
  """
  del chosen_lengths, rejected_lengths
  chosen = beta * (policy_chosen_logps - gamma * ref_chosen_logps)
  rejected = beta * (policy_rejected_logps - gamma * ref_rejected_logps)
  losses = jax.nn.softplus(-(chosen - rejected))  # = -log sigmoid(h), stable.
  return losses, reward_metrics(chosen, rejected, policy_chosen_logps, policy_rejected_logps)


@register("sigmoid_norm")
def sigmoid_norm(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, chosen_lengths, rejected_lengths, beta=0.1):
  """Length-normalised DPO: the log-ratios are divided by the completion lengths.

  h = beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) / |y_w|
              - (log pi(y_l|x) - log pi_ref(y_l|x)) / |y_l|]
  loss = -log sigmoid(h)

  Removes DPO's incentive to prefer longer completions (a summed log-ratio grows with
  length). Since the per-token log-ratio is ~|y| times smaller, beta is usually larger than
  DPO's. Lengths are clamped at 1 so an empty completion gives no division by zero. The
  rewards/* metrics are the length-normalised rewards beta * log-ratio / |y| that h compares.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` completion token counts (float).
    beta: inverse temperature of the per-token implicit reward.

  Returns:
    ``([B] losses, metrics)``.

  Example:
    >>> sigmoid_norm(policy_chosen_logps=jnp.array([-4.]), policy_rejected_logps=jnp.array([-9.]),
    ...              ref_chosen_logps=jnp.array([-6.]), ref_rejected_logps=jnp.array([-9.]),
    ...              chosen_lengths=jnp.array([2.]), rejected_lengths=jnp.array([3.]),
    ...              beta=1.0)[0]   # -log sigmoid(1.0)

  References:
    Saeidi et al., "Insights into Alignment: Evaluating DPO and its Variants Across
    Multiple Tasks", arXiv 2404.14723; Meng et al., "SimPO: Simple Preference Optimization
    with a Reference-Free Reward", arXiv 2405.14734 (length normalisation).
  """
  chosen = beta * (policy_chosen_logps - ref_chosen_logps) / jnp.maximum(chosen_lengths, 1.0)
  rejected = (beta * (policy_rejected_logps - ref_rejected_logps)
              / jnp.maximum(rejected_lengths, 1.0))
  losses = jax.nn.softplus(-(chosen - rejected))
  return losses, reward_metrics(chosen, rejected, policy_chosen_logps, policy_rejected_logps)


@register("exo_pair")
def exo_pair(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1,
             label_smoothing=1e-3):
  """EXO (pairwise): reverse KL from the model's to the (smoothed) label's preference.

  With h the DPO logit, p = sigmoid(h) the policy's implied P(y_w > y_l) and the label
  distribution (1 - eps, eps):

    loss = KL(Bern(p) || Bern(1 - eps))
         = p (log sigmoid(h) - log(1 - eps)) + (1 - p) (log sigmoid(-h) - log eps)

  The minimum (0) is at p = 1 - eps. eps must lie in (0, 1): log eps is -inf at 0 (TRL
  silently replaces 0 by 1e-3, the default here). 1 - p is computed as sigmoid(-h) and both
  log-probabilities with log_sigmoid, so for |h| ~ 1e3 the vanishing factor multiplies a
  finite log (0 * finite), never 0 * inf.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature of the implicit reward.
    label_smoothing: eps in (0, 1), mass the target puts on the rejected response winning.

  Returns:
    ``([B] losses, metrics)`` with the ``pairwise_metrics``.

  Example:
    >>> z = jnp.zeros(1)
    >>> exo_pair(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...          ref_rejected_logps=z, label_smoothing=0.5)[0]   # [0.]

  References:
    Ji et al., "Towards Efficient Exact Optimization of Language Model Alignment",
    arXiv 2402.00856 (eq. 16); TRL ``loss_type="exo_pair"``.
  """
  del chosen_lengths, rejected_lengths
  _check("label_smoothing", label_smoothing, lambda e: 0 < e < 1, "0 < eps < 1")
  h = _dpo_logits(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                  ref_rejected_logps)
  eps = label_smoothing
  losses = (jax.nn.sigmoid(h) * (jax.nn.log_sigmoid(h) - jnp.log1p(-eps))
            + jax.nn.sigmoid(-h) * (jax.nn.log_sigmoid(-h) - jnp.log(eps)))
  return losses, pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                                  ref_chosen_logps, ref_rejected_logps)


@register("discopop")
def discopop(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
             ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1,
             tau=0.05):
  """DiscoPOP (log-ratio modulated loss): a sigmoid-gated blend of logistic and exp losses.

  With h the DPO logit and m = sigmoid(h / tau):

    loss = (1 - m) * (-log sigmoid(h)) + m * exp(-h)

  Computed as softplus(-h) * sigmoid(-h / tau) + exp(-h + log_sigmoid(h / tau)): the naive
  exp(-h) * m is inf * 0 = NaN for h ~ -1e3. For tau < 1 the exponent -h + log sigmoid(h/tau)
  tends to -inf on both sides, so the loss stays finite for any h; for tau >= 1 the
  exponential term genuinely grows like exp(|h| (1 - 1/tau)) as h -> -inf.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature of the implicit reward.
    tau: temperature of the gate (> 0); the paper and TRL use 0.05.

  Returns:
    ``([B] losses, metrics)`` with the ``pairwise_metrics``.

  Example:
    >>> z = jnp.zeros(1)
    >>> discopop(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...          ref_rejected_logps=z)[0]   # [(log 2 + 1) / 2]

  References:
    Chris Lu et al., "Discovering Preference Optimization Algorithms with and for Large
    Language Models", arXiv 2406.08414 (eq. 5); TRL ``loss_type="discopop"``.
  """
  del chosen_lengths, rejected_lengths
  _check("tau", tau, lambda t: t > 0, "tau > 0")
  h = _dpo_logits(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                  ref_rejected_logps)
  logistic = jax.nn.softplus(-h) * jax.nn.sigmoid(-h / tau)
  exponential = jnp.exp(-h + jax.nn.log_sigmoid(h / tau))
  losses = logistic + exponential
  return losses, pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                                  ref_chosen_logps, ref_rejected_logps)
