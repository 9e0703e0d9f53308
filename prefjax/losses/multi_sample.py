"""Multi-sample preference losses: mDPO and mIPO compare groups of responses.

A "multi" batch has, for each of B prompts, K chosen and K rejected responses (the chosen
group is preferred as a whole): the pairwise keywords with shapes ``[B, K]``, plus optional
``chosen_mask, rejected_mask`` (``[B, K]``, 1 = a real sample) for groups with fewer than K
samples. Masked entries are replaced by 0 with ``where`` right after the elementwise
log-ratios (never multiplied by the mask), so padding may hold any value, even NaN, without
a NaN reaching the loss or the gradient (padded lengths must be finite). A group whose
mask is all zero has reward 0.

With K = 1, ``mdpo`` is ``dpo`` and ``mipo`` is ``ipo``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.dpo import reward_metrics
from prefjax.losses.registry import register


def _masked_mean_and_count(x_bk, mask_bk):
  """Mean over the valid entries of each row (0 for an empty row) and their count.

  The ``where`` comes before any arithmetic on ``x_bk``, so a NaN in a masked entry gets a
  zero cotangent instead of 0 * NaN.
  """
  count_b = jnp.sum(mask_bk, axis=-1).astype(jnp.float32)
  total_b = jnp.sum(jnp.where(mask_bk, x_bk, 0.0), axis=-1)
  return total_b / jnp.maximum(count_b, 1.0), count_b


def _uses(weight):
  """False only for a Python zero, so a traced weight always keeps its term."""
  return not (isinstance(weight, (int, float)) and weight == 0)


def _mask(mask_bk, like_bk):
  return jnp.ones(like_bk.shape, bool) if mask_bk is None else jnp.asarray(mask_bk) > 0.5


def _chosen_nll(policy_chosen_logps, chosen_lengths, chosen_mask_bk):
  """Per-token NLL of the chosen samples, averaged over each valid group: ``[B]``."""
  if chosen_lengths is None:
    raise ValueError("nll_weight > 0 needs chosen_lengths")
  per_token_bk = -policy_chosen_logps / jnp.maximum(chosen_lengths, 1.0)
  return _masked_mean_and_count(per_token_bk, chosen_mask_bk)[0]


@register("mdpo", kind="multi")
def mdpo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
         chosen_lengths=None, rejected_lengths=None, chosen_mask=None, rejected_mask=None,
         beta=0.1, label_smoothing=0.0, nll_weight=0.0):
  """mDPO: DPO between the mean implicit rewards of a chosen and a rejected group.

  R_w = (1/K_w) sum_i beta * log(pi(y_w^i|x) / pi_ref(y_w^i|x))   (over valid samples)
  R_l = (1/K_l) sum_j beta * log(pi(y_l^j|x) / pi_ref(y_l^j|x))
  loss = -(1 - eps) log sigmoid(R_w - R_l) - eps log sigmoid(R_l - R_w)
         + nll_weight * (1/K_w) sum_i (-log pi(y_w^i|x) / |y_w^i|)

  The Bradley-Terry model on group rewards: the chosen group is preferred as a
  distribution, not sample by sample. K = 1 with ``nll_weight=0`` is ``dpo``.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B, K]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B, K]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B, K]`` token counts; chosen ones are needed for
      the NLL term.
    chosen_mask, rejected_mask: optional ``[B, K]``, 1 = real sample.
    beta: inverse temperature of the implicit reward.
    label_smoothing: eps, as in cDPO.
    nll_weight: weight of the length-normalised NLL of the chosen samples.

  Returns:
    ``([B] losses, metrics)``: rewards/* are the group rewards R_w, R_l (``[B]``);
    logps/* the mean policy log-probs of each group; ``nll/chosen`` if ``nll_weight``.

  Example:
    >>> z = jnp.zeros((1, 3))
    >>> mdpo(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...      ref_rejected_logps=z)[0]   # [log 2]

  References:
    Wang et al., "Preference Optimization with Multi-Sample Comparisons", arXiv 2410.12138.
  """
  del rejected_lengths
  m_w = _mask(chosen_mask, policy_chosen_logps)
  m_l = _mask(rejected_mask, policy_rejected_logps)
  mean_w, _ = _masked_mean_and_count(policy_chosen_logps - ref_chosen_logps, m_w)
  mean_l, _ = _masked_mean_and_count(policy_rejected_logps - ref_rejected_logps, m_l)
  r_w, r_l = beta * mean_w, beta * mean_l
  h = r_w - r_l
  # softplus(-h) = -log sigmoid(h): stable for |h| ~ 1e3.
  losses = (1.0 - label_smoothing) * jax.nn.softplus(-h) + label_smoothing * jax.nn.softplus(h)
  metrics = reward_metrics(r_w, r_l, _masked_mean_and_count(policy_chosen_logps, m_w)[0],
                           _masked_mean_and_count(policy_rejected_logps, m_l)[0])
  if _uses(nll_weight):
    nll = _chosen_nll(policy_chosen_logps, chosen_lengths, m_w)
    losses = losses + nll_weight * nll
    metrics["nll/chosen"] = jax.lax.stop_gradient(nll)
  return losses, metrics


@register("mipo", kind="multi")
def mipo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
         chosen_lengths=None, rejected_lengths=None, chosen_mask=None, rejected_mask=None,
         beta=0.1, average_log_ratios=True, unbiased=False, nll_weight=0.0):
  """mIPO: IPO's squared regression on the difference of group-mean log-ratios.

  rho(y) = log pi(y|x) - log pi_ref(y|x), divided by |y| if ``average_log_ratios``
  D = mean_i rho(y_w^i) - mean_j rho(y_l^j)        (over the K_w, K_l valid samples)
  plug-in:   loss = (D - 1/(2 beta))^2
  unbiased:  loss = (D - 1/(2 beta))^2 - s_w^2 / K_w - s_l^2 / K_l
  (+ nll_weight * mean_i (-log pi(y_w^i|x) / |y_w^i|) in both cases)

  As in ``ipo``, beta is IPO's tau and D is not multiplied by it. The objective is the
  population one, (mu - 1/(2 beta))^2 with mu = E[rho(y_w)] - E[rho(y_l)] for the prompt.
  The plug-in square is biased upward: the samples are independent given x, so
  Var[D] = sigma_w^2 / K_w + sigma_l^2 / K_l and
    E[(D - c)^2] = (E[D] - c)^2 + Var[D] = (mu - c)^2 + sigma_w^2 / K_w + sigma_l^2 / K_l.
  The unbiased sample variance s^2 = sum_i (rho_i - mean rho)^2 / (K - 1) has E[s^2] =
  sigma^2, so subtracting s_w^2 / K_w + s_l^2 / K_l makes the estimate unbiased (it can be
  negative). A group with fewer than 2 valid samples cannot estimate its variance; its
  correction is 0 (so K = 1 gives ``ipo`` exactly). ``average_log_ratios`` defaults to True
  like ``ipo`` (TRL's IPO).

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B, K]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B, K]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B, K]`` token counts; required when
      ``average_log_ratios`` (both) or ``nll_weight`` (chosen).
    chosen_mask, rejected_mask: optional ``[B, K]``, 1 = real sample.
    beta: the regularisation strength tau; the target is 1 / (2 beta).
    average_log_ratios: divide each log-ratio by its completion length.
    unbiased: subtract the variance of the group means (see above).
    nll_weight: weight of the length-normalised NLL of the chosen samples.

  Returns:
    ``([B] losses, metrics)``: rewards/* are beta * mean rho per group (``[B]``); logps/*
    the mean policy log-probs of each group; ``mipo/variance_correction``
    (s_w^2/K_w + s_l^2/K_l, ``[B]``, reported whether or not it is subtracted);
    ``nll/chosen`` if ``nll_weight``.

  Example:
    >>> z = jnp.zeros((1, 4))
    >>> mipo(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...      ref_rejected_logps=z, beta=0.5, average_log_ratios=False)[0]   # [1.]

  References:
    Wang et al., "Preference Optimization with Multi-Sample Comparisons", arXiv 2410.12138;
    Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv 2310.12036.
  """
  m_w = _mask(chosen_mask, policy_chosen_logps)
  m_l = _mask(rejected_mask, policy_rejected_logps)
  rho_w = policy_chosen_logps - ref_chosen_logps
  rho_l = policy_rejected_logps - ref_rejected_logps
  if average_log_ratios:
    if chosen_lengths is None or rejected_lengths is None:
      raise ValueError("mipo with average_log_ratios=True needs chosen_lengths and "
                       "rejected_lengths")
    rho_w = rho_w / jnp.maximum(chosen_lengths, 1.0)
    rho_l = rho_l / jnp.maximum(rejected_lengths, 1.0)
  rho_w = jnp.where(m_w, rho_w, 0.0)  # Before any squaring: see _masked_mean_and_count.
  rho_l = jnp.where(m_l, rho_l, 0.0)
  mean_w, k_w = _masked_mean_and_count(rho_w, m_w)
  mean_l, k_l = _masked_mean_and_count(rho_l, m_l)
  losses = (mean_w - mean_l - 1.0 / (2.0 * beta)) ** 2

  def variance_of_mean(rho_bk, mask_bk, mean_b, k_b):
    # Unbiased s^2 / K; 0 where K < 2 (no variance estimate from one sample).
    sq_dev = jnp.where(mask_bk, (rho_bk - mean_b[:, None]) ** 2, 0.0)
    s2 = jnp.sum(sq_dev, axis=-1) / jnp.maximum(k_b - 1.0, 1.0)
    return jnp.where(k_b >= 2, s2 / jnp.maximum(k_b, 1.0), 0.0)

  correction = (variance_of_mean(rho_w, m_w, mean_w, k_w)
                + variance_of_mean(rho_l, m_l, mean_l, k_l))
  if unbiased:
    losses = losses - correction
  metrics = reward_metrics(beta * mean_w, beta * mean_l,
                           _masked_mean_and_count(policy_chosen_logps, m_w)[0],
                           _masked_mean_and_count(policy_rejected_logps, m_l)[0])
  metrics["mipo/variance_correction"] = jax.lax.stop_gradient(correction)
  if _uses(nll_weight):
    nll = _chosen_nll(policy_chosen_logps, chosen_lengths, m_w)
    losses = losses + nll_weight * nll
    metrics["nll/chosen"] = jax.lax.stop_gradient(nll)
  return losses, metrics
