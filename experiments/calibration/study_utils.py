"""Shared analysis of the calibration studies: a reward before/after RC-Mean, RC-LWR, penalty.

Reference: Huang et al., "Post-hoc Reward Calibration: A Case Study on Length Bias",
arXiv 2409.17407.
"""
from __future__ import annotations

import numpy as np

from prefjax import rewards as rw


def calibrations(rewards_1, rewards_2, chars_1, chars_2, *, frac=0.3, min_count=20):
  """{method: (calibrated first [P], calibrated second [P])} incl. "none".

  The length penalty's lambda is the least-squares slope of reward on characters (the same
  data the other methods see), so it removes the linear part of the length trend.
  """
  r = np.concatenate([rewards_1, rewards_2]).astype(np.float64)
  c = np.concatenate([chars_1, chars_2]).astype(np.float64)
  p = len(rewards_1)
  lam = float(np.polyfit(c, r, 1)[0])
  out = {"none": (r[:p], r[p:])}
  m1, m2 = rw.rc_mean(rewards_1, rewards_2, chars_1, chars_2, min_count=min_count)
  out["rc_mean"] = (np.asarray(m1.rewards), np.asarray(m2.rewards))
  lwr = np.asarray(rw.rc_lwr(r, c, frac=frac).rewards)
  out["rc_lwr"] = (lwr[:p], lwr[p:])
  pen = np.asarray(rw.length_penalty(r, c, lam=lam).rewards)
  out[f"penalty(lam={lam:.4f})"] = (pen[:p], pen[p:])
  return out


def spearman(x, y) -> float:
  return float(rw.spearman(np.asarray(x, np.float64), np.asarray(y, np.float64)))
