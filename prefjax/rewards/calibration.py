"""Post-hoc reward calibration: remove a feature-dependent bias b(c) from reward scores.

The observed reward is modelled as r(x, y) = r*(x, y) + b(c(y)), with c a feature of the
response (length in characters or tokens, markdown elements, ...) and r* independent of c.
b is estimated from the scored set itself and subtracted:

  r_hat = r - alpha * b(c)

* RC-Mean: b(c0) = mean reward over all responses with |c - c0| <= d, with
  d = mean_pairs |c(y_1) - c(y_2)| / ratio; applied only where the windows hold enough points.
* RC-LWR: b(c0) = robust LOWESS fit of reward on c, evaluated at c0 (see ``lowess.py``).
* Baseline length penalty r - lambda * c, and RC-LWR applied on top of it.

Also the evaluation metrics the paper reports: pairwise ranking accuracy and the Spearman
correlation of reward with the feature.

Reference: Huang et al., "Post-hoc Reward Calibration: A Case Study on Length Bias",
arXiv 2409.17407.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from prefjax.rewards.lowess import lowess


class Calibrated(NamedTuple):
  """Calibrated rewards ``[N]`` and the estimated bias b(c) ``[N]`` that was removed."""
  rewards: jax.Array
  bias: jax.Array


class RCMean(NamedTuple):
  """RC-Mean output, all ``[N]``.

  rewards: r - alpha * b(c) where ``calibrated``, else r unchanged.
  bias: the window mean b(c) (computed for every row; applied only where ``calibrated``).
  count: number of responses in each row's window (the row itself included).
  calibrated: bool, the row's window (and its pair partner's) held >= min_count points.
  half_width: scalar d.
  """
  rewards: jax.Array
  bias: jax.Array
  count: jax.Array
  calibrated: jax.Array
  half_width: jax.Array


def calibrate(rewards, bias, *, alpha=1.0):
  """r_hat = r - alpha * b. Args: ``[N]`` rewards and bias. Returns ``[N]``."""
  return rewards - alpha * bias


# ----------------------------------------------------------------------------- RC-Mean


def rc_mean_half_width(features_1, features_2, *, ratio=4.0):
  """d = mean_i |c(y_1^i) - c(y_2^i)| / ratio over ``[P]`` paired features. Returns a scalar."""
  return jnp.mean(jnp.abs(jnp.asarray(features_1) - jnp.asarray(features_2))) / ratio


@jax.jit
def window_mean(query, features, rewards, half_width):
  """Mean reward of the responses whose feature lies in [c0 - d, c0 + d], for each query c0.

  b(c0) = sum_j 1[|c_j - c0| <= d] r_j / n(c0),  n(c0) = sum_j 1[|c_j - c0| <= d].

  O((N + Q) log N): sort once, prefix sums, two searchsorted per query.

  Args:
    query: ``[Q]`` feature values c0.
    features: ``[N]`` features of the pooled scored set.
    rewards: ``[N]`` rewards of the pooled scored set.
    half_width: scalar d >= 0 (the window is closed).

  Returns:
    ``([Q] mean, [Q] int count)``; the mean is NaN where the count is 0.
  """
  order = jnp.argsort(features)
  c_sorted = features[order]
  r_sorted = rewards[order]
  shift = jnp.mean(r_sorted)  # centring keeps the prefix-sum differences accurate
  csum = jnp.concatenate([jnp.zeros((1,), r_sorted.dtype), jnp.cumsum(r_sorted - shift)])
  lo = jnp.searchsorted(c_sorted, query - half_width, side="left")
  hi = jnp.searchsorted(c_sorted, query + half_width, side="right")
  count = hi - lo
  mean = (csum[hi] - csum[lo]) / jnp.maximum(count, 1) + shift
  return jnp.where(count > 0, mean, jnp.nan), count


@jax.jit
def _rc_mean_rows(rewards, features, partner, half_width, min_count, alpha):
  bias, count = window_mean(features, features, rewards, half_width)
  ok = count >= min_count
  ok = ok & jnp.where(partner >= 0, ok[jnp.maximum(partner, 0)], True)
  out = jnp.where(ok, rewards - alpha * bias, rewards)
  return RCMean(out, bias, count, ok, jnp.asarray(half_width, rewards.dtype))


def rc_mean_rows(rewards, features, *, half_width, min_count=20, alpha=1.0, partner=None):
  """RC-Mean on a pooled set of scored responses, optionally tied into pairs.

  b(c0) = window_mean(c0; d); r_hat = r - alpha * b(c) where the row's window holds at least
  ``min_count`` responses and so does its partner's (if it has one); otherwise r is kept.

  Args:
    rewards: ``[N]`` rewards (chosen and rejected pooled).
    features: ``[N]`` feature c of each response.
    half_width: d (see ``rc_mean_half_width``).
    min_count: smallest window population that is calibrated.
    alpha: calibration constant.
    partner: optional ``[N]`` int, index of the other response of the pair, -1 if none.

  Returns:
    ``RCMean`` (all ``[N]``).
  """
  rewards = jnp.asarray(rewards)
  if partner is None:
    partner = jnp.full(rewards.shape, -1, dtype=jnp.int32)
  return _rc_mean_rows(rewards, jnp.asarray(features, rewards.dtype), jnp.asarray(partner),
                       half_width, min_count, alpha)


def rc_mean(rewards_1, rewards_2, features_1, features_2, *, ratio=4.0, min_count=20,
            alpha=1.0, half_width=None):
  """RC-Mean for ``[P]`` pairs: both responses' windows need ``min_count`` points.

  d = mean |c_1 - c_2| / ratio (unless ``half_width`` is given); the window means are over
  all 2P responses pooled.

  Returns:
    ``(RCMean for the first responses, RCMean for the second)``, each field ``[P]``.

  Example:
    >>> r1, r2 = rc_mean(r_chosen, r_rejected, len_chosen, len_rejected, min_count=20)
    >>> accuracy = pairwise_accuracy(r1.rewards, r2.rewards).mean()
  """
  c1, c2 = jnp.asarray(features_1), jnp.asarray(features_2)
  if half_width is None:
    half_width = rc_mean_half_width(c1, c2, ratio=ratio)
  p = c1.shape[0]
  partner = jnp.concatenate([jnp.arange(p, 2 * p), jnp.arange(p)])
  both = rc_mean_rows(jnp.concatenate([jnp.asarray(rewards_1), jnp.asarray(rewards_2)]),
                      jnp.concatenate([c1, c2]), half_width=half_width,
                      min_count=min_count, alpha=alpha, partner=partner)
  first = RCMean(*(f[:p] for f in both[:4]), both.half_width)
  second = RCMean(*(f[p:] for f in both[:4]), both.half_width)
  return first, second


# ----------------------------------------------------------------------- RC-LWR, penalty


def frac_for_ties(features, frac=0.3) -> float:
  """The smallest LOWESS window fraction >= ``frac`` whose windows all reach past their own
  tie group: k = int(frac * n) > the largest number of equal feature values.

  Where more than k points share one value (short answers: most have the same token
  count), that value's k-point window has radius 0 and LOWESS (statsmodels' rule, kept by
  ``lowess``) falls back to the reward of ONE of the tied points, the first in sort order:
  the bias of the whole group is then a single sample's reward, not a local mean. With this
  fraction every window holds the whole tie group and its nearest other value."""
  f = np.asarray(features)             # host-side, on concrete features
  n = f.size
  if n < 2:
    return float(frac)
  largest = int(np.unique(f, return_counts=True)[1].max())
  return float(min(1.0, max(frac, (largest + 1.5) / n)))


def rc_lwr(rewards, features, *, frac=0.3, it=3, delta=0.0, alpha=1.0):
  """RC-LWR: b(c) = LOWESS(reward ~ c) at c; r_hat = r - alpha * b(c).

  Args:
    rewards: ``[N]`` rewards.
    features: ``[N]`` feature values (ties are exact and cheap; see ``lowess``).
    frac, it, delta: LOWESS window fraction, robustifying iterations, interpolation distance.
    alpha: calibration constant.

  Returns:
    ``Calibrated`` ([N] rewards, [N] bias). Plans on the host, so not traceable under jit.
  """
  bias = lowess(rewards, features, frac=frac, it=it, delta=delta)
  return Calibrated(calibrate(jnp.asarray(rewards, bias.dtype), bias, alpha=alpha), bias)


def length_penalty(rewards, features, *, lam):
  """Baseline r_hat = r - lambda * c; the bias reported is lambda * c. ``[N]`` -> ``[N]``."""
  rewards = jnp.asarray(rewards)
  bias = lam * jnp.asarray(features, rewards.dtype)
  return Calibrated(rewards - bias, bias)


def rc_lwr_penalty(rewards, features, *, lam, frac=0.3, it=3, delta=0.0, alpha=1.0):
  """RC-LWR on top of the length penalty: r' = r - lambda c, r_hat = r' - alpha * LOWESS(r')(c).

  Returns:
    ``Calibrated``: rewards r_hat ``[N]``, bias = the LOWESS fit of r' ``[N]``.
  """
  penalized = length_penalty(rewards, features, lam=lam).rewards
  return rc_lwr(penalized, features, frac=frac, it=it, delta=delta, alpha=alpha)


# ---------------------------------------------------------------------------- metrics


def pairwise_accuracy(chosen_rewards, rejected_rewards):
  """``ranking/accuracy`` per pair: 1[r(y_w) > r(y_l)] (a tie counts as wrong). ``[P]``."""
  return (jnp.asarray(chosen_rewards) > jnp.asarray(rejected_rewards)).astype(jnp.float32)


@jax.jit
def rankdata(x):
  """Ranks 1..N with ties given their average rank (scipy's ``method="average"``). ``[N]``."""
  n = x.shape[0]
  order = jnp.argsort(x)
  xs = x[order]
  new = jnp.concatenate([jnp.ones((1,), bool), xs[1:] != xs[:-1]])
  group = jnp.cumsum(new) - 1
  idx = jnp.arange(n)
  first = jax.ops.segment_min(idx, group, num_segments=n, indices_are_sorted=True)
  last = jax.ops.segment_max(idx, group, num_segments=n, indices_are_sorted=True)
  avg = (first[group] + last[group]).astype(jnp.result_type(float)) / 2.0 + 1.0
  return jnp.zeros(n, avg.dtype).at[order].set(avg)


@jax.jit
def spearman(a, b):
  """Spearman rank correlation: Pearson correlation of the average ranks of ``[N]`` a and b.

  rho = sum (Ra - mean Ra)(Rb - mean Rb) / sqrt(sum (Ra - mean Ra)^2 sum (Rb - mean Rb)^2);
  NaN if either input is constant (as scipy).
  """
  ra, rb = rankdata(a), rankdata(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  return (ra * rb).sum() / jnp.sqrt((ra * ra).sum() * (rb * rb).sum())
