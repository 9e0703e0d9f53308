"""Regression and margin losses on the log-ratios: IPO, SPPO (hard labels) and hinge (SLiC).

Where DPO's logistic loss keeps pushing the margin to infinity on deterministic preferences,
these losses stop at a target: IPO regresses the log-ratio margin onto 1/(2 tau), SPPO
regresses each response's log-ratio onto +-1/(2 beta) separately, and the hinge loss is zero
once the margin exceeds 1/beta.

Every function here takes the pairwise batch of ``registry.py`` (``[B]`` summed completion
log-probs and token counts) and returns ``([B] losses, metrics)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.dpo import pairwise_metrics, reward_metrics
from prefjax.losses.registry import register


@register("ipo")
def ipo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_lengths=None, rejected_lengths=None, beta=0.1, average_log_ratios=True):
  """IPO: squared regression of the log-ratio margin onto 1/(2 tau), tau = ``beta``.

  rho(y) = log pi(y|x) - log pi_ref(y|x), divided by |y| if ``average_log_ratios``
  loss = (rho(y_w) - rho(y_l) - 1 / (2 beta))^2

  The margin is *not* multiplied by beta (beta only sets the target), as in the paper's
  eq. 17. ``average_log_ratios=True`` (the default) matches TRL, which divides the summed
  log-probs by the completion length for IPO; ``False`` is the paper's sequence-level form.
  Lengths are clamped at 1. At policy == reference, loss = 1 / (4 beta^2). The rewards/*
  metrics are beta * rho (length-averaged when ``average_log_ratios``, like TRL's).

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` completion token counts (float); required
      when ``average_log_ratios``.
    beta: the regularisation strength tau; the target margin is 1 / (2 beta).
    average_log_ratios: divide each log-ratio by its completion length.

  Returns:
    ``([B] losses, metrics)``.

  Example:
    >>> z = jnp.zeros(1)
    >>> ipo(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...     ref_rejected_logps=z, beta=0.5, average_log_ratios=False)[0]   # [1.]

  References:
    Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv 2310.12036 (eq. 17); TRL ``loss_type="ipo"``.
  """
  rho_w = policy_chosen_logps - ref_chosen_logps
  rho_l = policy_rejected_logps - ref_rejected_logps
  if average_log_ratios:
    if chosen_lengths is None or rejected_lengths is None:
      raise ValueError("ipo with average_log_ratios=True needs chosen_lengths and "
                       "rejected_lengths")
    rho_w = rho_w / jnp.maximum(chosen_lengths, 1.0)
    rho_l = rho_l / jnp.maximum(rejected_lengths, 1.0)
  losses = (rho_w - rho_l - 1.0 / (2.0 * beta)) ** 2
  return losses, reward_metrics(beta * rho_w, beta * rho_l, policy_chosen_logps,
                                policy_rejected_logps)


@register("sppo_hard")
def sppo_hard(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
              ref_rejected_logps, chosen_lengths=None, rejected_lengths=None, beta=0.1):
  """SPPO with hard win probabilities: each log-ratio regresses onto +-1/(2 beta).

  a = log pi(y_w|x) - log pi_ref(y_w|x),  b = log pi(y_l|x) - log pi_ref(y_l|x)
  loss = (a - 1 / (2 beta))^2 + (b + 1 / (2 beta))^2

  SPPO's update regresses beta^-1-scaled log-ratios onto P(y beats pi) - 1/2; with the hard
  labels P = 1 for the winner and 0 for the loser this gives targets +-1/(2 beta). At
  policy == reference, loss = 1 / (2 beta^2).

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse temperature; the targets are +-1 / (2 beta).

  Returns:
    ``([B] losses, metrics)`` with the ``pairwise_metrics``.

  Example:
    >>> z = jnp.zeros(1)
    >>> sppo_hard(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...           ref_rejected_logps=z, beta=0.5)[0]   # [2.]

  References:
    Wu et al., "Self-Play Preference Optimization for Language Model Alignment",
    arXiv 2405.00675 (eq. 4.7 with hard P); TRL ``loss_type="sppo_hard"``.
  """
  del chosen_lengths, rejected_lengths
  a = policy_chosen_logps - ref_chosen_logps
  b = policy_rejected_logps - ref_rejected_logps
  target = 0.5 / beta
  losses = (a - target) ** 2 + (b + target) ** 2
  return losses, pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                                  ref_chosen_logps, ref_rejected_logps)


@register("hinge")
def hinge(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
          chosen_lengths=None, rejected_lengths=None, beta=0.1):
  """Hinge (SLiC) loss on the DPO logit: zero once the log-ratio margin exceeds 1/beta.

  h = beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]
  loss = max(0, 1 - h)

  SLiC-HF's calibration loss max(0, delta - log pi(y_w) + log pi(y_l)) with margin
  delta = 1/beta, here (as in TRL) on reference-adjusted log-ratios. At h = 1 the gradient
  is the subgradient 0 chosen by ``jax.nn.relu``.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused).
    beta: inverse margin; the loss vanishes for log-ratio margins above 1/beta.

  Returns:
    ``([B] losses, metrics)`` with the ``pairwise_metrics``.

  Example:
    >>> z = jnp.zeros(1)
    >>> hinge(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...       ref_rejected_logps=z)[0]   # [1.]

  References:
    Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arXiv 2305.10425; TRL ``loss_type="hinge"``.
  """
  del chosen_lengths, rejected_lengths
  h = beta * ((policy_chosen_logps - ref_chosen_logps)
              - (policy_rejected_logps - ref_rejected_logps))
  losses = jax.nn.relu(1.0 - h)
  return losses, pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                                  ref_chosen_logps, ref_rejected_logps)
