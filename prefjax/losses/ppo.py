"""PPO's loss on per-token inputs: clipped policy loss, clipped value loss, entropy, KL.

Per completion action t (mask m_t = 1), with ratio rho_t = exp(log pi(a_t) - log pi_old(a_t)):

  l^pi_t  = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps_low, 1 + eps_high))
  l^V_t   = 1/2 max((V_t - R_t)^2, (V_old,t + clip(V_t - V_old,t, -c, c) - R_t)^2)
  l_t     = l^pi_t + vf_coef l^V_t - entropy_coef H_t + beta_t k(log pi(a_t), log pi_ref(a_t))

(eps_high > eps_low is DAPO's "clip-higher"; k is a KL estimator from ``prefjax.losses.kl``, its
coefficient beta a batch field so an adaptive controller never recompiles the step; with
beta = 0 the reference log-probs are unused.) Aggregation over tokens, stated explicitly:

  "token_mean"  sum over all valid tokens of the batch / their number  (PPO2, DAPO). The
                per-example value is sum_t l_t m_t; the objective must divide by token counts
                (``per_token_objective(aggregation)`` is True), which the step does globally.
  "seq_mean"    mean over examples of (sum_t l_t m_t / sum_t m_t)     (GRPO's original).
  "seq_sum"     mean over examples of (sum_t l_t m_t / T), T the row length, a constant
                (Dr. GRPO: no length normalisation bias).

References: Schulman et al., "Proximal Policy Optimization Algorithms", arXiv 1707.06347;
Yu et al., "DAPO", arXiv 2503.14476 (decoupled clip, token-mean); Liu et al., "Understanding
R1-Zero-Like Training", arXiv 2503.20783 (seq_sum).

Example:
  >>> loss_b, metrics = ppo(policy_token_logps=lp, old_token_logps=lp, advantages=adv, ...)
"""
from __future__ import annotations

import jax.numpy as jnp

from prefjax.errors import ConfigError
from prefjax.losses.registry import register
from prefjax.losses.kl import kl_estimate

AGGREGATIONS = ("token_mean", "seq_mean", "seq_sum")


def per_token_objective(aggregation: str) -> bool:
  """Whether the step must divide by token counts (True) or by examples (False)."""
  if aggregation not in AGGREGATIONS:
    raise ConfigError(f"ppo: unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")
  return aggregation == "token_mean"


def clipped_policy_loss(logps_bt, old_logps_bt, advantages_bt, *, clip_low, clip_high):
  """Per-token max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high)) and clipped flags."""
  ratio = jnp.exp(logps_bt - old_logps_bt)
  unclipped = -advantages_bt * ratio
  clipped = -advantages_bt * jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  return jnp.maximum(unclipped, clipped), (clipped > unclipped).astype(jnp.float32)


def clipped_value_loss(values_bt, old_values_bt, returns_bt, *, clip):
  """Per-token 1/2 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) and clipped flags."""
  v_clip = old_values_bt + jnp.clip(values_bt - old_values_bt, -clip, clip)
  a, b = jnp.square(values_bt - returns_bt), jnp.square(v_clip - returns_bt)
  return 0.5 * jnp.maximum(a, b), (b > a).astype(jnp.float32)


def aggregate(token_losses_bt, mask_bt, aggregation: str):
  """Per-example values [B] of per-token losses, as the stated aggregation needs them."""
  per_token_objective(aggregation)
  s = (token_losses_bt * mask_bt).sum(-1)
  if aggregation == "token_mean":
    return s
  if aggregation == "seq_mean":
    return s / jnp.maximum(mask_bt.sum(-1), 1.0)
  return s / mask_bt.shape[-1]


@register("ppo", kind="ppo", needs_reference=False)
def ppo(*, policy_token_logps, policy_values, policy_entropy, old_token_logps, old_values,
        ref_token_logps, advantages, returns, completion_mask, kl_coefs, lengths, clip_low=0.2,
        clip_high=0.2, value_clip=0.2, vf_coef=0.1, entropy_coef=0.0, kl_estimator="k3",
        aggregation="token_mean"):
  """PPO loss (see the module docstring).

  Args:
    policy_token_logps, old_token_logps, ref_token_logps: [B, T] log-probs of the sampled
      tokens under the current, the rollout (old) and the reference policy.
    policy_values, old_values, returns: [B, T] critic values now / at rollout and targets
      (all zeros for critic-free estimators; then use vf_coef = 0).
    policy_entropy: [B, T] entropy of the current policy's next-token distribution.
    advantages: [B, T]; completion_mask: [B, T] 1 on completion actions.
    kl_coefs: [B] the KL-in-loss coefficient beta (0 when the KL is not in the loss).
    lengths: [B] completion token counts (read by the step's token-mean denominator).
  Returns:
    (per-example losses [B], metrics of shape [B] (averaged by the step) or scalars).
  """
  del lengths
  m = completion_mask.astype(jnp.float32)
  pg, pg_clipped = clipped_policy_loss(policy_token_logps, old_token_logps, advantages,
                                       clip_low=clip_low, clip_high=clip_high)
  vl, v_clipped = clipped_value_loss(policy_values, old_values, returns, clip=value_clip)
  kl = kl_estimate(policy_token_logps, ref_token_logps, kl_estimator)
  tok = pg + vf_coef * vl - entropy_coef * policy_entropy + kl_coefs[:, None] * kl
  per_example = aggregate(tok, m, aggregation)
  seq = lambda x: (x * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)        # per-sequence means
  log_ratio = policy_token_logps - old_token_logps
  metrics = {
      "ppo/policy_loss": seq(pg), "ppo/value_loss": seq(vl), "ppo/entropy": seq(policy_entropy),
      "ppo/clip_fraction": seq(pg_clipped), "ppo/value_clip_fraction": seq(v_clipped),
      "ppo/approx_kl_old": seq(jnp.expm1(-log_ratio) + log_ratio),
      "ppo/kl_to_ref": seq(kl), "ppo/ratio": seq(jnp.exp(log_ratio)),
  }
  return per_example, metrics
