"""Why DPO rarely flips rankings: pair difficulty, flip thresholds and flip tracking.

From Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings",
arXiv 2405.19534, Sec. 4. Same conventions as ``prefjax.metrics.ranking``: a pair is
``(y_0, y_1)`` with ``y_0`` the labelled preferred response, per-example values are
``[B]``, per-checkpoint values ``[K, B]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

def dpo_difficulty(ref_chosen, ref_rejected):
  """Difficulty of a pair for DPO: c_b = log pi_ref(y_1|x) - log pi_ref(y_0|x).

  c > 0 means the reference ranks the pair wrongly; the larger c, the harder to flip.

  Args:
    ref_chosen, ref_rejected: ``[B]`` summed reference log-probs.

  Returns:
    ``[B]`` c.

  Reference: Chen et al., arXiv 2405.19534, Sec. 4 (difficulty of a datapoint).
  """
  return jnp.asarray(ref_rejected) - jnp.asarray(ref_chosen)


def dpo_flip_loss(c, *, beta):
  """The DPO loss a pair must reach before the model ranks it correctly.

  With h = beta-free log-ratio margin [log pi(y_0)/pi_ref(y_0) - log pi(y_1)/pi_ref(y_1)],
  log pi(y_0) - log pi(y_1) = h - c, so the ranking is correct iff h >= c. The DPO loss
  -log sigmoid(beta h) decreases in h, hence: correct iff L_DPO <= -log sigmoid(beta c).
  For beta = 0.1 and c = 10, 50, 100 the threshold is 0.313, 0.0067, 4.5e-5.

  Args:
    c: ``[B]`` difficulty (``dpo_difficulty``).
    beta: DPO's beta.

  Returns:
    ``[B]`` loss threshold, computed as softplus(-beta c) (no log(0)).

  Reference: Chen et al., arXiv 2405.19534, Sec. 4 (Theorem on flipping a ranking).

  Example:
    >>> dpo_flip_loss(jnp.array([10.]), beta=0.1)  # [0.3133]
  """
  return jax.nn.softplus(-beta * jnp.asarray(c))


def ipo_flip_loss(c, *, tau):
  """The IPO counterpart of ``dpo_flip_loss``: the loss level that decides the ranking.

  IPO minimises L = (h - 1/(2 tau))^2 with h as in ``dpo_flip_loss`` (TRL's ``ipo`` loss
  calls tau "beta"). The ranking is correct iff h >= c, and L alone fixes h only up to
  h = 1/(2 tau) +- sqrt(L), because L is not monotone in h. Let L* = (c - 1/(2 tau))^2:
    * c <= 1/(2 tau) ("learnable"): L <= L* implies a correct ranking (both roots are
      >= c); along h <= 1/(2 tau), the path from h = 0 at initialisation, it is iff.
    * c > 1/(2 tau): the IPO optimum h = 1/(2 tau) < c keeps the wrong ranking; a correct
      ranking needs h >= c, i.e. overshooting the target, so L >= L* (never at L = 0).
  Derived here from the IPO loss of Azar et al. (arXiv 2310.12036); read as "correct iff
  L <= L*", the statement holds only in the learnable case below the target.

  Args:
    c: ``[B]`` difficulty (``dpo_difficulty``).
    tau: IPO's regularisation (target margin 1/(2 tau)).

  Returns:
    ``(threshold [B], learnable [B] bool)``.

  Reference: Chen et al., arXiv 2405.19534, Appendix (IPO analogue of the DPO result).

  Example:
    >>> ipo_flip_loss(jnp.array([3., 10.]), tau=0.1)  # ([4., 25.], [True, False])
  """
  c = jnp.asarray(c)
  target = 1.0 / (2.0 * tau)
  return jnp.square(c - target), c <= target


def flip_rates(ref_correct, policy_correct, *, valid=None):
  """How many of the reference's rankings a policy flipped, each way.

  wrong_to_right_k = #{b: ref wrong, policy_k right} / #{b: ref wrong}
  right_to_wrong_k = #{b: ref right, policy_k wrong} / #{b: ref right}
  (0 when the denominator is 0; the counts are returned to tell those cases apart).

  Args:
    ref_correct: ``[B]`` the reference's per-pair correctness (0/1 or bool).
    policy_correct: ``[K, B]`` per-checkpoint correctness (or ``[B]`` for one).
    valid: ``[B]`` bool mask of real pairs.

  Returns:
    dict: ``ranking/flips/{wrong_to_right,right_to_wrong}`` ``[K]`` (or scalars) and
    ``ranking/flips/{num_ref_wrong,num_ref_right}`` scalars.

  Reference: Chen et al., arXiv 2405.19534, Sec. 4 (DPO rarely flips rankings).

  Example:
    >>> flip_rates(jnp.array([0, 0, 1]), jnp.array([1, 0, 0]))  # 0.5 and 1.0
  """
  ref = jnp.asarray(ref_correct).astype(bool)
  pol = jnp.asarray(policy_correct).astype(bool)
  v = jnp.ones(ref.shape, bool) if valid is None else jnp.asarray(valid, bool)
  ref_wrong, ref_right = v & ~ref, v & ref
  n_wrong, n_right = jnp.sum(ref_wrong), jnp.sum(ref_right)
  return {
      "ranking/flips/wrong_to_right":
          jnp.sum(ref_wrong & pol, axis=-1) / jnp.maximum(n_wrong, 1),
      "ranking/flips/right_to_wrong":
          jnp.sum(ref_right & ~pol, axis=-1) / jnp.maximum(n_right, 1),
      "ranking/flips/num_ref_wrong": n_wrong,
      "ranking/flips/num_ref_right": n_right,
  }


def flip_rates_by_difficulty(ref_correct, policy_correct, difficulty, bin_edges, *,
                             valid=None):
  """``flip_rates`` per difficulty bin [edges[i], edges[i+1]) of c (``dpo_difficulty``).

  Pairs outside every bin are not counted (use -inf / inf edges for open-ended bins).

  Args:
    ref_correct: ``[B]``; policy_correct: ``[K, B]`` (or ``[B]``); difficulty: ``[B]`` c.
    bin_edges: ``[E]`` increasing edges, E - 1 bins.
    valid: ``[B]`` bool mask of real pairs.

  Returns:
    dict, with M = E - 1 bins: ``ranking/flips_by_difficulty/`` + ``num_pairs`` ``[M]``,
    ``num_ref_wrong`` ``[M]``, ``num_ref_right`` ``[M]``, ``num_wrong_to_right``
    ``[K, M]``, ``num_right_to_wrong`` ``[K, M]``, ``wrong_to_right`` ``[K, M]`` and
    ``right_to_wrong`` ``[K, M]`` (fractions; 0 for empty denominators).

  Reference: Chen et al., arXiv 2405.19534, Sec. 4.

  Example:
    >>> flip_rates_by_difficulty(jnp.array([0, 0]), jnp.array([[1, 0]]),
    ...     jnp.array([1., 60.]), jnp.array([0., 50., jnp.inf]))  # w->r [[1., 0.]]
  """
  ref = jnp.asarray(ref_correct).astype(bool)
  pol = jnp.asarray(policy_correct).astype(bool)
  edges = jnp.asarray(bin_edges)
  d = jnp.asarray(difficulty)
  v = jnp.ones(ref.shape, bool) if valid is None else jnp.asarray(valid, bool)
  idx = jnp.searchsorted(edges, d, side="right") - 1  # bin of each pair, (B,)
  num_bins = edges.shape[0] - 1
  in_bin_bm = (idx[:, None] == jnp.arange(num_bins)[None, :]) & v[:, None]  # (B, M)
  wrong_bm = in_bin_bm & ~ref[:, None]
  right_bm = in_bin_bm & ref[:, None]
  n_wrong, n_right = jnp.sum(wrong_bm, 0), jnp.sum(right_bm, 0)  # (M,)
  w2r = jnp.einsum("...b,bm->...m", pol.astype(jnp.int32), wrong_bm.astype(jnp.int32))
  r2w = jnp.einsum("...b,bm->...m", (~pol).astype(jnp.int32), right_bm.astype(jnp.int32))
  p = "ranking/flips_by_difficulty/"
  return {
      p + "num_pairs": jnp.sum(in_bin_bm, 0),
      p + "num_ref_wrong": n_wrong,
      p + "num_ref_right": n_right,
      p + "num_wrong_to_right": w2r,
      p + "num_right_to_wrong": r2w,
      p + "wrong_to_right": w2r / jnp.maximum(n_wrong, 1),
      p + "right_to_wrong": r2w / jnp.maximum(n_right, 1),
  }
