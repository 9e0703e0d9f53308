"""Ranking accuracy, idealized ranking accuracy, the alignment gap and Table 1.

Pair difficulty and flip tracking (Sec. 4 of the paper) live in ``prefjax.metrics.flips``.

Definitions from Chen et al., "Preference Learning Algorithms Do Not Learn Preference
Rankings", arXiv 2405.19534. Every function is a pure ``jnp`` function of log-likelihood
arrays (no model calls). Convention: a pair is ``(y_0, y_1)`` with ``y_0`` the labelled
preferred response ("chosen", ``responses[0]`` of a ``PreferenceExample``) and ``alpha``
the probability that ``y_0`` is preferred. Per-example values are ``[B]``; means take an
optional ``valid`` mask and are 0 (never NaN) when nothing is valid.

Scores are log-likelihoods of a completion given the prompt: the summed token log-probs
(R in the paper) or their per-token mean (the length-normalised R-tilde); see
``sequence_scores``. Metric names are slash-separated (``ranking/accuracy``, ...).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax.numpy as jnp

BETAS = (0.01, 0.1, 1.0, 5.0, 10.0)  # the paper's beta grid for idealized accuracy
TIE_TOLERANCE = 0.01  # alpha = 0.5 pairs: correct when |pi(y_0|x) - pi(y_1|x)| < 0.01
ALPHA_EPS = 1e-3  # alpha = 1 (or 0) is replaced by 1 - 1e-3 (or 1e-3)

# (header, metric name) in the order of the paper's Table 1.
TABLE1_COLUMNS = (
    ("R~", "ranking/accuracy_normalized"),
    ("R~* min", "ranking/idealized_accuracy_normalized/min"),
    ("R~* med", "ranking/idealized_accuracy_normalized/median"),
    ("R~* max", "ranking/idealized_accuracy_normalized/max"),
    ("R", "ranking/accuracy"),
    ("R* min", "ranking/idealized_accuracy/min"),
    ("R* med", "ranking/idealized_accuracy/median"),
    ("R* max", "ranking/idealized_accuracy/max"),
    ("gap~", "ranking/alignment_gap_normalized"),
    ("gap", "ranking/alignment_gap"),
)


def _masked_mean(values, valid):
  """Mean of ``values [B]`` over ``valid [B]`` (all when None); 0 when none is valid."""
  values = jnp.asarray(values, jnp.float32)
  if valid is None:
    valid = jnp.ones(values.shape[-1:], bool)
  w = jnp.asarray(valid, jnp.float32)
  return jnp.sum(values * w, axis=-1) / jnp.maximum(jnp.sum(w), 1.0)


def sequence_scores(token_logps, mask):
  """Log-likelihood of each completion: summed (R) and per-token mean (R-tilde).

  sum_b = sum_t m_bt * log pi(y_t | x, y_<t);  mean_b = sum_b / max(sum_t m_bt, 1).

  Args:
    token_logps: ``[B, T]`` per-token log-probs of the completion tokens.
    mask: ``[B, T]`` 1/True on completion tokens (prompt and padding are 0).

  Returns:
    ``(sum [B], mean [B])``; a fully masked row gives 0 for both (not NaN), and masked
    positions may hold -inf or NaN without leaking into the result.

  Reference: Chen et al., arXiv 2405.19534, Sec. 2 (R and R-tilde).

  Example:
    >>> sequence_scores(jnp.array([[-1., -3.]]), jnp.array([[1, 1]]))  # ([-4.], [-2.])
  """
  mask = jnp.asarray(mask).astype(bool)
  logps_bt = jnp.where(mask, token_logps, 0.0)  # where, not *: -inf * 0 is NaN
  total = jnp.sum(logps_bt, axis=-1)
  count = jnp.sum(mask, axis=-1).astype(total.dtype)
  return total, total / jnp.maximum(count, 1.0)


def prob_abs_diff(logp_a, logp_b):
  """|exp(a) - exp(b)| computed stably as exp(max(a, b)) * -expm1(-|a - b|).

  Long sequences have summed log-probs of -100s, so both probabilities underflow to 0 and
  the difference is exactly 0; this is what the paper's rule on probabilities implies.
  Equal inputs (including both -inf) give 0 rather than NaN.
  """
  hi = jnp.maximum(logp_a, logp_b)
  gap = jnp.where(logp_a == logp_b, 0.0, jnp.abs(logp_a - logp_b))
  return jnp.exp(hi) * -jnp.expm1(-gap)


def _is_tie(alpha):
  return jnp.abs(alpha - 0.5) < 1e-6


def ranking_accuracy(chosen, rejected, alpha=None, *, valid=None, tie_tolerance=TIE_TOLERANCE):
  """Ranking accuracy of a model on pairs: does it give the preferred response more mass?

  correct_b = 1[log pi(y_0|x) >= log pi(y_1|x)]              if alpha_b > 0.5 (or None)
            = 1[log pi(y_1|x) >= log pi(y_0|x)]              if alpha_b < 0.5
            = 1[|pi(y_0|x) - pi(y_1|x)| < tie_tolerance]    if alpha_b = 0.5 (tie rule)
  accuracy = mean_b correct_b.

  The tie rule compares probabilities, not log-probs: with summed scores of long
  completions both probabilities underflow to 0 and every tie counts as correct; this is
  what the paper's rule implies (with per-token mean scores it is a real constraint).

  Args:
    chosen, rejected: ``[B]`` log-likelihoods of y_0 and y_1 (sums or per-token means).
    alpha: ``[B]`` P(y_0 preferred), or None when y_0 is always strictly preferred.
    valid: ``[B]`` bool mask of real examples for the mean (None: all).
    tie_tolerance: the probability gap under which an alpha = 0.5 pair counts correct.

  Returns:
    ``(correct [B] float32, accuracy scalar)``.

  Reference: Chen et al., arXiv 2405.19534, Definition of ranking accuracy (Sec. 2).

  Example:
    >>> ranking_accuracy(jnp.array([-1., -5.]), jnp.array([-2., -3.]))[1]  # 0.5
  """
  chosen, rejected = jnp.asarray(chosen), jnp.asarray(rejected)
  correct = chosen >= rejected
  if alpha is not None:
    alpha = jnp.asarray(alpha, jnp.float32)
    tie = prob_abs_diff(chosen, rejected) < tie_tolerance
    correct = jnp.where(_is_tie(alpha), tie, jnp.where(alpha > 0.5, correct, rejected >= chosen))
  correct = correct.astype(jnp.float32)
  return correct, _masked_mean(correct, valid)


def listwise_ranking_accuracy(scores, ranks, *, valid=None, tie_tolerance=TIE_TOLERANCE):
  """Ranking accuracy for N ranked responses: correct only if the whole ordering matches.

  correct_b = 1[for all i, j with rank_i < rank_j: s_i >= s_j, and
                for all i != j with rank_i = rank_j: |exp(s_i) - exp(s_j)| < tie_tolerance].
  With N = 2 this is ``ranking_accuracy`` (ranks [1, 2], or [1, 1] for alpha = 0.5).
  An example with fewer than two valid responses is vacuously correct; one with none is
  left out of the mean.

  Args:
    scores: ``[B, N]`` model log-likelihoods of the N responses.
    ranks: ``[B, N]`` ground-truth ranks, smaller is better (1 = best); ties allowed.
    valid: ``[B, N]`` bool mask of real responses (ragged N); None: all.
    tie_tolerance: as in ``ranking_accuracy``.

  Returns:
    ``(correct [B] float32, accuracy scalar)``.

  Reference: Chen et al., arXiv 2405.19534, ranking accuracy for rankings of N outputs.

  Example:
    >>> listwise_ranking_accuracy(jnp.array([[-1., -2., -3.]]), jnp.array([[1, 2, 3]]))
  """
  scores, ranks = jnp.asarray(scores), jnp.asarray(ranks)
  if valid is None:
    valid = jnp.ones(scores.shape, bool)
  valid = jnp.asarray(valid, bool)
  s_i, s_j = scores[:, :, None], scores[:, None, :]  # (B, N, 1), (B, 1, N)
  r_i, r_j = ranks[:, :, None], ranks[:, None, :]
  pair_valid = valid[:, :, None] & valid[:, None, :]  # (B, N, N)
  off_diag = ~jnp.eye(scores.shape[1], dtype=bool)
  strict_violation = (r_i < r_j) & (s_i < s_j)
  tie_violation = (r_i == r_j) & off_diag & ~(prob_abs_diff(s_i, s_j) < tie_tolerance)
  violated = jnp.any((strict_violation | tie_violation) & pair_valid, axis=(1, 2))
  correct = (~violated).astype(jnp.float32)
  return correct, _masked_mean(correct, jnp.any(valid, axis=1))


def idealized_ranking_correct(ref_chosen, ref_rejected, alpha, *, beta,
                              tie_tolerance=TIE_TOLERANCE, alpha_eps=ALPHA_EPS):
  """Would the exact optimum of the DPO/RLHF objective rank this pair correctly?

  The optimum satisfies log pi*(y_0|x) - log pi*(y_1|x) =
      m_b = log pi_ref(y_0|x) - log pi_ref(y_1|x) + (1/beta) log(alpha / (1 - alpha)),
  so correct_b = 1[m_b > 0] for alpha > 0.5 and 1[m_b < 0] for alpha < 0.5. alpha = 1
  (resp. 0) is replaced by 1 - alpha_eps (resp. alpha_eps) to keep m finite.

  alpha = 0.5: the log-odds term vanishes, so pi* keeps the reference's ratio and the tie
  rule of ``ranking_accuracy`` applies; the probabilities are taken at the reference's
  scale, |pi_ref(y_0|x) - pi_ref(y_1|x)| < tie_tolerance (pi* is only known up to the
  prompt's normaliser). As with observed accuracy, summed scores of long completions make
  this trivially true.

  Datasets with a single label carry no alpha; the authors' public code assumes 0.75 for
  the labelled-preferred response (angie-chen55/pref-learning-ranking-acc,
  rlhf_minimizer_client.py). Pass such an alpha explicitly.

  Args:
    ref_chosen, ref_rejected: ``[B]`` reference log-likelihoods (sums or per-token means).
    alpha: ``[B]`` P(y_0 preferred).
    beta: the KL coefficient of the objective.

  Returns:
    ``[B]`` float32 indicators.

  Reference: Chen et al., arXiv 2405.19534, idealized ranking accuracy (Sec. 3).

  Example:
    >>> idealized_ranking_correct(jnp.array([-3.]), jnp.array([-1.]), jnp.array([1.]),
    ...                           beta=1.0)  # -2 + log(999) > 0 -> [1.]
  """
  ref_chosen = jnp.asarray(ref_chosen)
  alpha = jnp.asarray(alpha, jnp.float32)
  a = jnp.clip(alpha, alpha_eps, 1.0 - alpha_eps)
  margin = ref_chosen - ref_rejected + (jnp.log(a) - jnp.log1p(-a)) / beta
  tie = prob_abs_diff(ref_chosen, ref_rejected) < tie_tolerance
  correct = jnp.where(_is_tie(alpha), tie, jnp.where(alpha > 0.5, margin > 0, margin < 0))
  return correct.astype(jnp.float32)


def _beta_key(beta):
  return f"beta_{float(beta):g}"


def idealized_ranking_accuracy(*, ref_chosen_sums, ref_rejected_sums, ref_chosen_means,
                               ref_rejected_means, alpha, betas: Sequence[float] = BETAS,
                               valid=None):
  """Idealized ranking accuracy, summed (R*) and length-normalised (R~*), over a beta grid.

  R*(beta) = mean_b idealized_ranking_correct(beta)_b, reported per beta and as min /
  median / max over ``betas``; R~* uses per-token mean reference log-probs instead.

  Args:
    ref_chosen_sums, ref_rejected_sums: ``[B]`` summed reference log-probs.
    ref_chosen_means, ref_rejected_means: ``[B]`` per-token mean reference log-probs.
    alpha: ``[B]`` P(y_0 preferred).
    betas: the beta grid (the paper's 0.01, 0.1, 1, 5, 10 by default).
    valid: ``[B]`` bool mask of real examples.

  Returns:
    dict of scalars: ``ranking/idealized_accuracy/{min,median,max,beta_<b>}`` and the same
    under ``ranking/idealized_accuracy_normalized/``.

  Reference: Chen et al., arXiv 2405.19534, Sec. 3 and Table 1.

  Example:
    >>> z = jnp.zeros(1); idealized_ranking_accuracy(ref_chosen_sums=z,
    ...     ref_rejected_sums=z, ref_chosen_means=z, ref_rejected_means=z,
    ...     alpha=jnp.ones(1))["ranking/idealized_accuracy/median"]  # 1.0
  """
  out = {}
  for name, chosen, rejected in (
      ("ranking/idealized_accuracy", ref_chosen_sums, ref_rejected_sums),
      ("ranking/idealized_accuracy_normalized", ref_chosen_means, ref_rejected_means)):
    accs = jnp.stack([
        _masked_mean(idealized_ranking_correct(chosen, rejected, alpha, beta=b), valid)
        for b in betas])  # (num_betas,)
    out[f"{name}/min"] = jnp.min(accs)
    out[f"{name}/median"] = jnp.median(accs)
    out[f"{name}/max"] = jnp.max(accs)
    for b, acc in zip(betas, accs):
      out[f"{name}/{_beta_key(b)}"] = acc
  return out


def alignment_gap(idealized_median, observed):
  """Alignment gap = median idealized ranking accuracy - observed ranking accuracy.

  Positive when the model ranks worse than the exact optimum of its objective would.
  Reference: Chen et al., arXiv 2405.19534, Sec. 3.
  """
  return idealized_median - observed


def table1(*, policy_chosen_sums, policy_rejected_sums, policy_chosen_means,
           policy_rejected_means, ref_chosen_sums, ref_rejected_sums, ref_chosen_means,
           ref_rejected_means, alpha=None, betas: Sequence[float] = BETAS, valid=None,
           tie_tolerance=TIE_TOLERANCE):
  """One row of the paper's Table 1: observed and idealized ranking accuracies and gaps.

  R~ / R: observed ranking accuracy of the policy with per-token mean / summed scores;
  R~* / R*: idealized accuracy (min, median, max over ``betas``) from the reference;
  gap = median idealized - observed, for each.

  Args:
    policy_*_sums, policy_*_means: ``[B]`` policy log-likelihoods of y_0 / y_1.
    ref_*_sums, ref_*_means: ``[B]`` reference log-likelihoods of y_0 / y_1.
    alpha: ``[B]`` P(y_0 preferred); required for the idealized columns (None: 1 - eps).
    betas, valid, tie_tolerance: as in ``idealized_ranking_accuracy`` / ``ranking_accuracy``.

  Returns:
    dict of scalars with every metric name of ``TABLE1_COLUMNS`` (plus per-beta values).

  Reference: Chen et al., arXiv 2405.19534, Table 1.
  """
  if alpha is None:
    alpha = jnp.ones(jnp.shape(policy_chosen_sums), jnp.float32)
  _, acc = ranking_accuracy(policy_chosen_sums, policy_rejected_sums, alpha, valid=valid,
                            tie_tolerance=tie_tolerance)
  _, acc_norm = ranking_accuracy(policy_chosen_means, policy_rejected_means, alpha,
                                 valid=valid, tie_tolerance=tie_tolerance)
  row = {"ranking/accuracy": acc, "ranking/accuracy_normalized": acc_norm}
  row.update(idealized_ranking_accuracy(
      ref_chosen_sums=ref_chosen_sums, ref_rejected_sums=ref_rejected_sums,
      ref_chosen_means=ref_chosen_means, ref_rejected_means=ref_rejected_means,
      alpha=alpha, betas=betas, valid=valid))
  row["ranking/alignment_gap"] = alignment_gap(row["ranking/idealized_accuracy/median"], acc)
  row["ranking/alignment_gap_normalized"] = alignment_gap(
      row["ranking/idealized_accuracy_normalized/median"], acc_norm)
  return row


def render_markdown(rows: Mapping[str, Mapping[str, float]], *, columns=TABLE1_COLUMNS,
                    label="model", scale=100.0, digits=1):
  """Render ``{row label: table1(...) dict}`` as a markdown table (percent by default).

  Example:
    >>> print(render_markdown({"zephyr": row}))  # | model | R~ | R~* min | ... |
  """
  header = "| " + " | ".join([label] + [h for h, _ in columns]) + " |"
  rule = "|" + "---|" * (len(columns) + 1)
  lines = [header, rule]
  for name, row in rows.items():
    cells = []
    for _, key in columns:
      value = row.get(key)
      cells.append("-" if value is None else f"{float(value) * scale:.{digits}f}")
    lines.append("| " + " | ".join([name] + cells) + " |")
  return "\n".join(lines)
