"""Reference-free preference losses: CPO, SimPO and ORPO.

These need no reference model (registered with ``needs_reference=False``): the train step
skips the reference forward pass and passes ``ref_chosen_logps=None,
ref_rejected_logps=None``, which they accept and ignore. Their rewards/* metrics report the
implicit reward each loss actually optimizes, which is *not* a log-ratio to a reference:
beta * summed log-prob for CPO, beta * length-averaged log-prob for SimPO and ORPO.

Every function here takes the pairwise batch of ``registry.py`` (``[B]`` summed completion
log-probs and token counts) and returns ``([B] losses, metrics)``. Token counts are clamped
at 1 before dividing.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.dpo import reward_metrics
from prefjax.losses.registry import register

# ORPO's odds p / (1 - p) are infinite at p = 1: an average log-prob is clamped to at most
# this value (log-odds <= ~13.8) so log(1 - p) stays finite. Its gradient there is cut.
_MAX_AVG_LOGP = -1e-6


def _smoothed_logistic(z, label_smoothing):
  # softplus(-z) = -log sigmoid(z): stable for |z| ~ 1e3.
  return (1.0 - label_smoothing) * jax.nn.softplus(-z) + label_smoothing * jax.nn.softplus(z)


def _log1mexp(x):
  """log(1 - exp(x)) for x < 0, accurate on both sides of -log 2 (Maechler, 2012).

  Near 0, 1 - exp(x) cancels, so use log(-expm1(x)); far below, exp(x) underflows, so use
  log1p(-exp(x)). Both branches are finite for every x <= _MAX_AVG_LOGP, so the unselected
  branch of the ``where`` cannot inject a NaN into the gradient.
  """
  return jnp.where(x > -jnp.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


@register("cpo", needs_reference=False)
def cpo(*, policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths=None,
        ref_chosen_logps=None, ref_rejected_logps=None, beta=0.1, alpha=1.0,
        label_smoothing=0.0):
  """CPO: a reference-free DPO-style preference term plus NLL on the chosen response.

  h = beta * (log pi(y_w|x) - log pi(y_l|x))
  loss = -(1 - eps) log sigmoid(h) - eps log sigmoid(-h) + alpha * (-log pi(y_w|x) / |y_w|)

  The log-probs in h are summed over tokens (as in TRL's CPO); the NLL term is the per-token
  NLL of the chosen completion (TRL averages it over all chosen tokens of the batch; this
  per-example form averages over each completion). rewards/* = beta * log pi(y).

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    chosen_lengths: ``[B]`` chosen completion token counts (float).
    rejected_lengths: ``[B]`` (unused).
    ref_chosen_logps, ref_rejected_logps: ignored (``None`` from the step).
    beta: inverse temperature of the preference term.
    alpha: weight of the chosen NLL term.
    label_smoothing: eps, as in cDPO.

  Returns:
    ``([B] losses, metrics)``: the shared rewards/*, logps/* and ``nll/chosen`` (``[B]``).

  Example:
    >>> cpo(policy_chosen_logps=jnp.array([-4.]), policy_rejected_logps=jnp.array([-4.]),
    ...     chosen_lengths=jnp.array([2.]))[0]   # [log 2 + 2]

  References:
    Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM
    Performance in Machine Translation", arXiv 2401.08417; TRL ``CPOTrainer``.
  """
  del rejected_lengths, ref_chosen_logps, ref_rejected_logps
  chosen = beta * policy_chosen_logps
  rejected = beta * policy_rejected_logps
  nll = -policy_chosen_logps / jnp.maximum(chosen_lengths, 1.0)
  losses = _smoothed_logistic(chosen - rejected, label_smoothing) + alpha * nll
  metrics = reward_metrics(chosen, rejected, policy_chosen_logps, policy_rejected_logps)
  metrics["nll/chosen"] = jax.lax.stop_gradient(nll)
  return losses, metrics


@register("simpo", needs_reference=False)
def simpo(*, policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths,
          ref_chosen_logps=None, ref_rejected_logps=None, beta=2.0, gamma=1.0,
          label_smoothing=0.0):
  """SimPO: logistic loss on length-averaged log-probs with a target margin gamma.

  r(y) = beta * log pi(y|x) / |y|
  loss = -(1 - eps) log sigmoid(r(y_w) - r(y_l) - gamma)
         - eps log sigmoid(-(r(y_w) - r(y_l) - gamma))

  The defaults (beta = 2, gamma / beta = 0.5) are in the paper's recommended range. The
  rewards/* metrics are r(y) (no margin), so rewards/accuracies = 1[r(y_w) > r(y_l)].

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    chosen_lengths, rejected_lengths: ``[B]`` completion token counts (float).
    ref_chosen_logps, ref_rejected_logps: ignored (``None`` from the step).
    beta: scale of the length-averaged reward.
    gamma: target reward margin (in reward units, i.e. already multiplied by beta).
    label_smoothing: eps, as in cDPO.

  Returns:
    ``([B] losses, metrics)``: the shared rewards/* and logps/*.

  Example:
    >>> simpo(policy_chosen_logps=jnp.array([-2.]), policy_rejected_logps=jnp.array([-6.]),
    ...       chosen_lengths=jnp.array([2.]), rejected_lengths=jnp.array([3.]))[0]
    ... # r_w = -2, r_l = -4: -log sigmoid(2 - 1)

  References:
    Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    arXiv 2405.14734.
  """
  del ref_chosen_logps, ref_rejected_logps
  chosen = beta * policy_chosen_logps / jnp.maximum(chosen_lengths, 1.0)
  rejected = beta * policy_rejected_logps / jnp.maximum(rejected_lengths, 1.0)
  losses = _smoothed_logistic(chosen - rejected - gamma, label_smoothing)
  return losses, reward_metrics(chosen, rejected, policy_chosen_logps, policy_rejected_logps)


@register("orpo", needs_reference=False)
def orpo(*, policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths,
         ref_chosen_logps=None, ref_rejected_logps=None, beta=0.1):
  """ORPO: NLL on the chosen response plus a log-odds-ratio preference term.

  a(y) = log pi(y|x) / |y|    (length-averaged log-prob, so p = exp(a) in (0, 1))
  log odds(y) = log(p / (1 - p)) = a(y) - log(1 - exp(a(y)))
  loss = -a(y_w) - beta * log sigmoid(log odds(y_w) - log odds(y_l))

  beta is the paper's lambda (TRL's name). log(1 - exp(a)) is computed by ``_log1mexp``
  (expm1 near 0, log1p far below) after clamping a <= -1e-6, since p -> 1 makes the odds
  infinite; an a > 0 (impossible for real log-probs) is clamped the same way. The NLL is the
  per-example per-token NLL (TRL averages over all chosen tokens of the batch).
  rewards/* = beta * a(y), as in TRL.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    chosen_lengths, rejected_lengths: ``[B]`` completion token counts (float).
    ref_chosen_logps, ref_rejected_logps: ignored (``None`` from the step).
    beta: lambda, the weight of the odds-ratio term.

  Returns:
    ``([B] losses, metrics)``: the shared rewards/* and logps/*, ``nll/chosen`` and
    ``orpo/log_odds_ratio`` (``[B]``, detached).

  Example:
    >>> l = jnp.log(0.5) * jnp.ones(1)
    >>> orpo(policy_chosen_logps=l, policy_rejected_logps=l, chosen_lengths=jnp.ones(1),
    ...      rejected_lengths=jnp.ones(1))[0]   # [log 2 + 0.1 log 2]

  References:
    Hong et al., "ORPO: Monolithic Preference Optimization without Reference Model",
    arXiv 2403.07691; TRL ``ORPOTrainer``.
  """
  del ref_chosen_logps, ref_rejected_logps
  avg_w = policy_chosen_logps / jnp.maximum(chosen_lengths, 1.0)
  avg_l = policy_rejected_logps / jnp.maximum(rejected_lengths, 1.0)
  safe_w = jnp.minimum(avg_w, _MAX_AVG_LOGP)
  safe_l = jnp.minimum(avg_l, _MAX_AVG_LOGP)
  log_odds_ratio = (safe_w - _log1mexp(safe_w)) - (safe_l - _log1mexp(safe_l))
  nll = -avg_w
  losses = nll + beta * jax.nn.softplus(-log_odds_ratio)  # softplus(-x) = -log sigmoid(x).
  metrics = reward_metrics(beta * avg_w, beta * avg_l, policy_chosen_logps,
                           policy_rejected_logps)
  metrics["nll/chosen"] = jax.lax.stop_gradient(nll)
  metrics["orpo/log_odds_ratio"] = jax.lax.stop_gradient(log_odds_ratio)
  return losses, metrics
