"""Per-token estimators of KL(p || q) from the log-probs of actions sampled from p.

With log-ratio  l_t = log p(a_t) - log q(a_t)  (q the reference), Schulman's estimators
("Approximating KL divergence", 2020) are

  k1 = l                        unbiased, high variance, can be negative
  k2 = l^2 / 2                  biased, low variance (its gradient is the KL's gradient)
  k3 = (exp(-l) - 1) + l        unbiased (E_p[q/p] = 1), low variance, always >= 0

Example:
  >>> kl_bt = kl_estimate(logps_bt, ref_logps_bt, "k3")   # [B, T]
"""
from __future__ import annotations

import jax.numpy as jnp

from prefjax.errors import ConfigError

ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logps_bt, ref_logps_bt, estimator: str = "k1"):
  """Per-token KL estimate [...] from policy and reference log-probs of the sampled tokens."""
  log_ratio = logps_bt - ref_logps_bt            # log p/q
  if estimator == "k1":
    return log_ratio
  if estimator == "k2":
    return 0.5 * jnp.square(log_ratio)
  if estimator == "k3":
    # exp(-l) - 1 + l, written with expm1 for accuracy at small l.
    return jnp.expm1(-log_ratio) + log_ratio
  raise ConfigError(f"unknown KL estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
