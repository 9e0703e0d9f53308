"""Direct Preference Optimization and its conservative (label-smoothed) form."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prefjax.losses.registry import register


def reward_metrics(chosen_rewards, rejected_rewards, policy_chosen_logps, policy_rejected_logps):
  """The shared ``rewards/*`` and ``logps/*`` metrics from per-response implicit rewards.

  Every pairwise loss reports the implicit reward it actually optimizes (``beta`` times the
  log-ratio for DPO, ``beta`` times the average log-prob for SimPO, ...), so that
  ``rewards/accuracies`` = 1[rewards/margins > 0] matches the loss's own notion of winning.
  Inputs are ``[B]`` (or ``[B, ...]``); every value is detached.
  """
  sg = jax.lax.stop_gradient
  chosen = sg(chosen_rewards)
  rejected = sg(rejected_rewards)
  margins = chosen - rejected
  return {
      "rewards/chosen": chosen,
      "rewards/rejected": rejected,
      "rewards/margins": margins,
      "rewards/accuracies": (margins > 0).astype(jnp.float32),
      "logps/chosen": sg(policy_chosen_logps),
      "logps/rejected": sg(policy_rejected_logps),
  }


def implicit_reward(policy_logps, ref_logps, beta):
  """DPO's implicit reward r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al.,
  arXiv 2305.18290), elementwise."""
  return beta * (policy_logps - ref_logps)


def pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                     ref_rejected_logps):
  """Implicit-reward metrics shared by every pairwise loss (names are slash-separated).

  rewards/chosen = beta * (log pi(y_w|x) - log pi_ref(y_w|x)), likewise for y_l;
  rewards/margins = chosen - rejected; rewards/accuracies = 1[margin > 0].
  All values are ``[B]`` and detached.
  """
  return reward_metrics(implicit_reward(policy_chosen_logps, ref_chosen_logps, beta),
                        implicit_reward(policy_rejected_logps, ref_rejected_logps, beta),
                        policy_chosen_logps, policy_rejected_logps)


@register("dpo")
def dpo(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
        chosen_lengths=None, rejected_lengths=None, beta=0.1, label_smoothing=0.0):
  """DPO sigmoid loss; with ``label_smoothing`` > 0 it is conservative DPO (cDPO).

  h = beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]
  loss = -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)

  At policy == reference, h = 0: loss = log 2 and d loss / d h = -(1 - 2 eps) / 2, so
  d loss / d (log-ratio margin) = -beta * (1 - 2 eps) / 2.

  Args:
    policy_chosen_logps, policy_rejected_logps: ``[B]`` summed completion log-probs.
    ref_chosen_logps, ref_rejected_logps: ``[B]`` the same under the reference model.
    chosen_lengths, rejected_lengths: ``[B]`` token counts (unused; part of the convention).
    beta: inverse temperature of the implicit reward.
    label_smoothing: eps, the assumed probability that a label is flipped (cDPO).

  Returns:
    ``([B] losses, metrics)``.

  Example:
    >>> z = jnp.zeros(2)
    >>> dpo(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...     ref_rejected_logps=z)[0]   # [log 2, log 2]

  References:
    Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
    Reward Model", arXiv 2305.18290; Mitchell, "A note on DPO with noisy preferences" (cDPO);
    Saeidi et al., "Insights into Alignment", arXiv 2404.14723.
  """
  del chosen_lengths, rejected_lengths
  logits = beta * ((policy_chosen_logps - ref_chosen_logps)
                   - (policy_rejected_logps - ref_rejected_logps))
  # log_sigmoid is stable for |logits| ~ 1e3 (no log(0)).
  losses = (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits)
            - label_smoothing * jax.nn.log_sigmoid(-logits))
  metrics = pairwise_metrics(beta, policy_chosen_logps, policy_rejected_logps,
                             ref_chosen_logps, ref_rejected_logps)
  return losses, metrics
