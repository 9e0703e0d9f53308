"""KL to the reference: per-token estimators, where the penalty goes, and its coefficient.

With actions sampled from the policy p and log-ratio  l_t = log p(a_t) - log q(a_t)  (q the
reference), Schulman's estimators of KL(p || q) per token ("Approximating KL divergence",
2020) are

  k1 = l                        unbiased, high variance, can be negative
  k2 = l^2 / 2                  biased, low variance (its gradient is the KL's gradient)
  k3 = (exp(-l) - 1) + l        unbiased (E_p[q/p] = 1), low variance, always >= 0

Placement (``KL_PLACEMENTS``): "reward" subtracts coef * k per token from the rewards before
the advantages (InstructGPT / Ziegler et al.); "loss" adds coef * k to the PPO loss per token
(GRPO); "both" does both; "none" neither.

The coefficient is fixed, or adapted towards a target KL by the proportional controller of
Ziegler et al., "Fine-Tuning Language Models from Human Preferences", arXiv 1909.08593, 2.2:

  e_t = clip(KL_t / KL_target - 1, -0.2, 0.2),     beta_{t+1} = beta_t (1 + K_beta e_t)

with K_beta = n_steps / horizon (n_steps: samples in the batch that measured KL_t).
"""
from __future__ import annotations

from prefjax.errors import ConfigError
from prefjax.losses.kl import ESTIMATORS, kl_estimate  # noqa: F401  (re-exported)

KL_PLACEMENTS = ("none", "reward", "loss", "both")


def check_placement(placement: str) -> None:
  if placement not in KL_PLACEMENTS:
    raise ConfigError(f"config.rl.kl.placement: unknown placement {placement!r}; valid: "
                      f"{', '.join(KL_PLACEMENTS)}")


def in_reward(placement: str) -> bool:
  check_placement(placement)
  return placement in ("reward", "both")


def in_loss(placement: str) -> bool:
  check_placement(placement)
  return placement in ("loss", "both")


def penalised_rewards(rewards_bt, logps_bt, ref_logps_bt, mask_bt, *, coef, estimator="k1"):
  """rewards - coef * k(logp, ref) on every completion action ([B, T])."""
  return rewards_bt - coef * kl_estimate(logps_bt, ref_logps_bt, estimator) * mask_bt


def adaptive_kl_update(coef: float, observed_kl: float, *, target: float, horizon: float,
                       n_steps: int, clip: float = 0.2) -> float:
  """One step of Ziegler et al.'s proportional controller (see the module docstring)."""
  if target <= 0 or horizon <= 0:
    raise ConfigError(f"adaptive KL needs target > 0 and horizon > 0, got target={target}, "
                      f"horizon={horizon}")
  err = min(max(observed_kl / target - 1.0, -clip), clip)
  return float(coef * (1.0 + err * n_steps / horizon))


class KLController:
  """The KL coefficient: fixed, or adaptive towards ``target`` (state: ``coef``, a float).

  ``update(observed_kl, n_steps)`` returns the new coefficient; a fixed controller returns
  its constant. The coefficient is part of an RL stage's checkpoint so resumption is exact.
  """

  def __init__(self, *, coef: float, adaptive: bool = False, target: float = 6.0,
               horizon: float = 10000.0):
    if coef < 0:
      raise ConfigError(f"config.rl.kl.coef must be >= 0, got {coef}")
    self.coef, self.adaptive, self.target, self.horizon = float(coef), adaptive, target, horizon
    if adaptive:
      adaptive_kl_update(1.0, 0.0, target=target, horizon=horizon, n_steps=1)  # validates

  def update(self, observed_kl: float, n_steps: int) -> float:
    if self.adaptive:
      self.coef = adaptive_kl_update(self.coef, observed_kl, target=self.target,
                                     horizon=self.horizon, n_steps=n_steps)
    return self.coef
