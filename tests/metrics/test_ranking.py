"""Tests for prefjax.metrics.ranking and prefjax.metrics.flips on hand-built cases."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax import metrics
from prefjax.metrics import (
    dpo_difficulty, dpo_flip_loss, flip_rates, flip_rates_by_difficulty,
    idealized_ranking_accuracy, idealized_ranking_correct, ipo_flip_loss,
    listwise_ranking_accuracy, prob_abs_diff, ranking_accuracy, render_markdown,
    sequence_scores, table1)


def _arr(*xs):
  return jnp.array(xs, jnp.float32)


# ---------------------------------------------------------------- sequence_scores


def test_sequence_scores_sum_and_mean():
  logps = jnp.array([[-1.0, -3.0, -7.0], [-2.0, -4.0, -6.0]])
  mask = jnp.array([[1, 1, 0], [0, 1, 1]])
  total, mean = sequence_scores(logps, mask)
  np.testing.assert_allclose(total, [-4.0, -10.0])
  np.testing.assert_allclose(mean, [-2.0, -5.0])


def test_sequence_scores_empty_mask_is_zero_not_nan():
  logps = jnp.array([[-jnp.inf, jnp.nan], [-1.0, -2.0]])  # junk on masked positions
  mask = jnp.array([[0, 0], [1, 0]], bool)
  total, mean = sequence_scores(logps, mask)
  np.testing.assert_array_equal(total, [0.0, -1.0])
  np.testing.assert_array_equal(mean, [0.0, -1.0])
  assert not np.any(np.isnan(np.asarray(mean)))


def test_sequence_scores_masking_equals_slicing():
  rng = np.random.default_rng(0)
  logps = -rng.random((3, 6)).astype(np.float32) * 5
  lengths = [6, 2, 4]
  mask = np.arange(6)[None, :] < np.array(lengths)[:, None]
  total, mean = jax.jit(sequence_scores)(logps, mask)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(total[b], logps[b, :n].sum(), rtol=1e-6)
    np.testing.assert_allclose(mean[b], logps[b, :n].mean(), rtol=1e-6)


# ---------------------------------------------------------------- prob_abs_diff


def test_prob_abs_diff_matches_float64_and_handles_extremes():
  a = np.array([-0.1, -2.0, -30.0, -1.0], np.float64)
  b = np.array([-0.2, -2.0, -31.0, -5.0], np.float64)
  got = prob_abs_diff(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(got, np.abs(np.exp(a) - np.exp(b)), rtol=1e-5, atol=1e-12)
  out = prob_abs_diff(_arr(-jnp.inf, -800.0, -jnp.inf), _arr(-jnp.inf, -900.0, -1.0))
  np.testing.assert_allclose(out, [0.0, 0.0, math.exp(-1.0)], rtol=1e-6)


# ---------------------------------------------------------------- ranking_accuracy


def test_ranking_accuracy_strict_and_equal_scores():
  correct, acc = ranking_accuracy(_arr(-1.0, -5.0, -2.0), _arr(-2.0, -3.0, -2.0))
  np.testing.assert_array_equal(correct, [1.0, 0.0, 1.0])  # equal log-probs count (>=)
  assert float(acc) == pytest.approx(2 / 3)


def test_ranking_accuracy_alpha_one_is_the_plain_rule():
  chosen, rejected = _arr(-1.0, -5.0, -3.0), _arr(-2.0, -3.0, -3.0)
  plain, _ = ranking_accuracy(chosen, rejected)
  with_alpha, _ = ranking_accuracy(chosen, rejected, _arr(1.0, 1.0, 1.0))
  np.testing.assert_array_equal(plain, with_alpha)


def test_ranking_accuracy_alpha_below_half_means_y1_is_preferred():
  correct, _ = ranking_accuracy(_arr(-1.0, -5.0), _arr(-2.0, -3.0), _arr(0.25, 0.25))
  np.testing.assert_array_equal(correct, [0.0, 1.0])


def test_ranking_accuracy_tie_rule_on_probabilities():
  # alpha = 0.5: correct iff |pi(y_0|x) - pi(y_1|x)| < 0.01.
  chosen = jnp.log(_arr(0.5, 0.5, 0.2))
  rejected = jnp.log(_arr(0.505, 0.52, 0.2))
  correct, acc = ranking_accuracy(chosen, rejected, _arr(0.5, 0.5, 0.5))
  np.testing.assert_array_equal(correct, [1.0, 0.0, 1.0])
  assert float(acc) == pytest.approx(2 / 3)


def test_ranking_accuracy_tie_rule_is_trivial_for_long_sequences():
  # Summed log-probs of long completions: both probabilities underflow, the gap is 0.
  correct, _ = ranking_accuracy(_arr(-350.0, -120.0), _arr(-90.0, -400.0), _arr(0.5, 0.5))
  np.testing.assert_array_equal(correct, [1.0, 1.0])
  # The per-token mean scores of the same pairs are not trivial.
  correct, _ = ranking_accuracy(jnp.log(_arr(0.6, 0.3)), jnp.log(_arr(0.3, 0.305)),
                                _arr(0.5, 0.5))
  np.testing.assert_array_equal(correct, [0.0, 1.0])


def test_ranking_accuracy_valid_mask_and_empty_batch():
  _, acc = ranking_accuracy(_arr(-1.0, -5.0), _arr(-2.0, -3.0), valid=jnp.array([True, False]))
  assert float(acc) == 1.0
  _, acc = ranking_accuracy(_arr(-1.0), _arr(-2.0), valid=jnp.array([False]))
  assert float(acc) == 0.0


def test_ranking_accuracy_jit_and_vmap():
  chosen, rejected, alpha = _arr(-1.0, -5.0), _arr(-2.0, -3.0), _arr(1.0, 0.5)
  eager = ranking_accuracy(chosen, rejected, alpha)
  jitted = jax.jit(ranking_accuracy)(chosen, rejected, alpha)
  np.testing.assert_array_equal(eager[0], jitted[0])
  stacked = jax.vmap(lambda c, r: ranking_accuracy(c, r)[1])(
      jnp.stack([chosen, rejected]), jnp.stack([rejected, chosen]))
  np.testing.assert_allclose(stacked, [0.5, 0.5])


# ---------------------------------------------------------------- listwise


def test_listwise_ordering_matches_and_not():
  scores = jnp.array([[-1.0, -2.0, -3.0],   # ranks 1, 2, 3: order matches
                      [-1.0, -3.0, -2.0],   # last two swapped
                      [-3.0, -1.0, -2.0]])  # ranks 3, 1, 2: matches
  ranks = jnp.array([[1, 2, 3], [1, 2, 3], [3, 1, 2]])
  correct, acc = listwise_ranking_accuracy(scores, ranks)
  np.testing.assert_array_equal(correct, [1.0, 0.0, 1.0])
  assert float(acc) == pytest.approx(2 / 3)


def test_listwise_ground_truth_ties_and_ragged_mask():
  scores = jnp.log(jnp.array([[0.50, 0.505, 0.1],    # tie within 0.01 -> correct
                              [0.50, 0.60, 0.1],     # tie 0.1 apart -> wrong
                              [0.10, 0.50, 0.4]]))   # 3rd masked: ranks [2, 1] hold
  ranks = jnp.array([[1, 1, 2], [1, 1, 2], [2, 1, 1]])
  valid = jnp.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
  correct, _ = listwise_ranking_accuracy(scores, ranks, valid=valid)
  np.testing.assert_array_equal(correct, [1.0, 0.0, 1.0])


def test_listwise_with_two_responses_equals_pairwise():
  rng = np.random.default_rng(1)
  chosen = jnp.asarray(np.log(rng.uniform(0.1, 0.9, 64)), jnp.float32)
  rejected = jnp.asarray(np.log(rng.uniform(0.1, 0.9, 64)), jnp.float32)
  alpha = jnp.asarray(rng.choice([0.5, 0.75, 1.0], 64), jnp.float32)
  pairwise, _ = ranking_accuracy(chosen, rejected, alpha)
  ranks = jnp.where((alpha == 0.5)[:, None], jnp.array([[1, 1]]), jnp.array([[1, 2]]))
  listwise, _ = listwise_ranking_accuracy(jnp.stack([chosen, rejected], 1), ranks)
  np.testing.assert_array_equal(pairwise, listwise)


# ---------------------------------------------------------------- idealized accuracy

# Five pairs whose indicator we compute by hand for each beta of the paper's grid.
#   m = ref_0 - ref_1 + log(alpha / (1 - alpha)) / beta
#   pair  ref diff  alpha   log-odds   beta: 0.01  0.1   1      5      10
#   A     -2        0.75    log 3      m>0   m>0   -0.90  -1.78  -1.89   -> 1 1 0 0 0
#   B     +1        0.6     log 1.5    all m > 0                          -> 1 1 1 1 1
#   C     -10       1->.999 log 999    681   59.1  -3.09  -8.6   -9.3    -> 1 1 0 0 0
#   D     tie (alpha 0.5), summed log-probs -300 / -200: underflow       -> 1 1 1 1 1
#   E     +0.5      0.25    -log 3     y_1 preferred: need m < 0; m = 0.5 - 1.0986/beta
#                                      -109  -10.5 -0.60  +0.28  +0.39   -> 1 1 1 0 0
_REF0 = _arr(-12.0, -4.0, -30.0, -300.0, -7.5)
_REF1 = _arr(-10.0, -5.0, -20.0, -200.0, -8.0)
_ALPHA = _arr(0.75, 0.6, 1.0, 0.5, 0.25)
_EXPECTED = {0.01: [1, 1, 1, 1, 1], 0.1: [1, 1, 1, 1, 1], 1.0: [0, 1, 0, 1, 1],
             5.0: [0, 1, 0, 1, 0], 10.0: [0, 1, 0, 1, 0]}


@pytest.mark.parametrize("beta", sorted(_EXPECTED))
def test_idealized_indicator_by_hand(beta):
  got = idealized_ranking_correct(_REF0, _REF1, _ALPHA, beta=beta)
  np.testing.assert_array_equal(got, _EXPECTED[beta])


def test_idealized_accuracy_min_median_max_and_normalized():
  # Normalised scores: pair A is right at every beta, the alpha = 0.5 pair D is a real
  # (non-underflowing) tie that fails: |0.5 - 0.3| >= 0.01.
  means0 = _arr(-0.5, -0.4, -0.2, math.log(0.5), -0.1)
  means1 = _arr(-0.6, -0.5, -0.3, math.log(0.3), -0.2)
  out = idealized_ranking_accuracy(ref_chosen_sums=_REF0, ref_rejected_sums=_REF1,
                                   ref_chosen_means=means0, ref_rejected_means=means1,
                                   alpha=_ALPHA)
  assert float(out["ranking/idealized_accuracy/min"]) == pytest.approx(0.4)
  assert float(out["ranking/idealized_accuracy/median"]) == pytest.approx(0.6)
  assert float(out["ranking/idealized_accuracy/max"]) == pytest.approx(1.0)
  for beta, expected in _EXPECTED.items():
    assert float(out[f"ranking/idealized_accuracy/beta_{beta:g}"]) == pytest.approx(
        np.mean(expected))
  # Normalised: E has diff +0.1, y_1 preferred: m = 0.1 - 1.0986/beta < 0 for all beta.
  for beta in metrics.BETAS:
    assert float(out[f"ranking/idealized_accuracy_normalized/beta_{beta:g}"]) == (
        pytest.approx(0.8))


def test_idealized_matches_numpy_transcription():
  rng = np.random.default_rng(2)
  ref0, ref1 = rng.normal(-20, 5, 200), rng.normal(-20, 5, 200)
  alpha = rng.choice([0.0, 1 / 3, 2 / 3, 1.0, 0.9], 200)
  for beta in metrics.BETAS:
    a = np.clip(alpha, 1e-3, 1 - 1e-3)
    m = ref0 - ref1 + np.log(a / (1 - a)) / beta
    expected = np.where(alpha > 0.5, m > 0, m < 0)
    got = idealized_ranking_correct(jnp.asarray(ref0, jnp.float32),
                                    jnp.asarray(ref1, jnp.float32),
                                    jnp.asarray(alpha, jnp.float32), beta=beta)
    far = np.abs(m) > 1e-3  # float32 vs float64 can differ only at m ~ 0
    np.testing.assert_array_equal(np.asarray(got)[far], expected[far])


# ---------------------------------------------------------------- table 1


def test_table1_row_and_gap():
  policy0, policy1 = _arr(-11.0, -4.0, -25.0, -300.0, -9.0), _REF1
  means0 = _arr(-0.5, -0.4, -0.2, -0.3, -0.1)
  means1 = _arr(-0.6, -0.5, -0.3, -0.3, -0.2)
  row = jax.jit(lambda *a: table1(
      policy_chosen_sums=a[0], policy_rejected_sums=a[1], policy_chosen_means=a[2],
      policy_rejected_means=a[3], ref_chosen_sums=_REF0, ref_rejected_sums=_REF1,
      ref_chosen_means=means0, ref_rejected_means=means1, alpha=_ALPHA))(
          policy0, policy1, means0, means1)
  for _, key in metrics.TABLE1_COLUMNS:
    assert key in row
  # Observed (summed): A wrong, B right, C wrong, D tie (underflow) right, E right (y_1).
  assert float(row["ranking/accuracy"]) == pytest.approx(0.6)
  assert float(row["ranking/alignment_gap"]) == pytest.approx(0.0, abs=1e-6)  # 0.6 - 0.6
  assert float(row["ranking/alignment_gap_normalized"]) == pytest.approx(
      float(row["ranking/idealized_accuracy_normalized/median"])
      - float(row["ranking/accuracy_normalized"]))
  table = render_markdown({"toy": row})
  lines = table.splitlines()
  assert lines[0].startswith("| model | R~ | R~* min | R~* med | R~* max | R | R* min")
  assert lines[2].startswith("| toy | ") and "| 60.0 | 40.0 | 60.0 | 100.0 |" in lines[2]


# ---------------------------------------------------------------- difficulty and flips


def test_dpo_flip_loss_paper_numbers():
  c = _arr(10.0, 50.0, 100.0)
  loss = np.asarray(dpo_flip_loss(c, beta=0.1), np.float64)
  assert round(loss[0], 3) == 0.313
  assert round(loss[1], 4) == 0.0067
  assert f"{loss[2]:.1e}" == "4.5e-05"
  np.testing.assert_allclose(loss, -np.log(1 / (1 + np.exp(-0.1 * np.array([10, 50, 100])))),
                             rtol=1e-5)


def test_dpo_flip_threshold_is_iff_correct_ranking():
  ref0, ref1 = _arr(-30.0), _arr(-20.0)  # reference ranks the pair wrongly
  c = dpo_difficulty(ref0, ref1)
  assert float(c[0]) == 10.0
  beta = 0.1
  threshold = dpo_flip_loss(c, beta=beta)
  for h in np.linspace(-5.0, 25.0, 61):  # h = policy log-ratio margin
    policy0, policy1 = ref0 + h, ref1  # log pi(y_0) - log pi(y_1) = h - c
    loss = jax.nn.softplus(-beta * h)
    correct, _ = ranking_accuracy(policy0, policy1)
    assert bool(loss <= threshold[0] + 1e-7) == bool(correct[0]), h


def test_ipo_flip_loss_hand_derived():
  # tau = 0.1: target margin 1/(2 tau) = 5. c = 3 is learnable with L* = (3 - 5)^2 = 4;
  # c = 10 is not: L* = 25 and a correct ranking needs L >= 25 (overshooting h >= 10).
  threshold, learnable = ipo_flip_loss(_arr(3.0, 10.0, 5.0), tau=0.1)
  np.testing.assert_allclose(threshold, [4.0, 25.0, 0.0])
  np.testing.assert_array_equal(learnable, [True, False, True])
  for c, thr in ((3.0, 4.0), (10.0, 25.0)):
    for h in np.linspace(-2.0, 15.0, 69):
      loss = (h - 5.0) ** 2
      correct = h - c >= 0  # log pi(y_0) - log pi(y_1) = h - c
      if c <= 5.0:
        if loss <= thr:
          assert correct, (c, h)
        if h <= 5.0:
          assert correct == (loss <= thr), (c, h)
      else:
        if correct:
          assert loss >= thr, (c, h)
  # At the IPO optimum (h = 5, L = 0) the c = 10 pair is still ranked wrongly.
  ref0, ref1 = _arr(-30.0), _arr(-20.0)  # c = 10
  correct, _ = ranking_accuracy(ref0 + 5.0, ref1)
  assert float(correct[0]) == 0.0


def test_flip_rates_small_example():
  ref = jnp.array([1, 1, 0, 0, 0])
  policy = jnp.array([[1, 0, 1, 0, 0],    # 1 of 3 wrong fixed, 1 of 2 right broken
                      [1, 1, 1, 1, 0]])   # 2 of 3 wrong fixed, none broken
  out = flip_rates(ref, policy)
  np.testing.assert_allclose(out["ranking/flips/wrong_to_right"], [1 / 3, 2 / 3])
  np.testing.assert_allclose(out["ranking/flips/right_to_wrong"], [1 / 2, 0.0])
  assert int(out["ranking/flips/num_ref_wrong"]) == 3
  assert int(out["ranking/flips/num_ref_right"]) == 2
  single = flip_rates(ref, policy[1], valid=jnp.array([1, 1, 1, 0, 0], bool))
  assert float(single["ranking/flips/wrong_to_right"]) == 1.0


def test_flip_rates_by_difficulty_counts_per_bin():
  ref = jnp.array([1, 1, 0, 0, 0])
  policy = jnp.array([[1, 0, 1, 0, 0], [1, 1, 1, 1, 0]])
  c = _arr(-5.0, -1.0, 3.0, 20.0, 30.0)
  edges = _arr(-jnp.inf, 0.0, 10.0, jnp.inf)
  out = flip_rates_by_difficulty(ref, policy, c, edges)
  p = "ranking/flips_by_difficulty/"
  np.testing.assert_array_equal(out[p + "num_pairs"], [2, 1, 2])
  np.testing.assert_array_equal(out[p + "num_ref_wrong"], [0, 1, 2])
  np.testing.assert_array_equal(out[p + "num_ref_right"], [2, 0, 0])
  np.testing.assert_array_equal(out[p + "num_wrong_to_right"], [[0, 1, 0], [0, 1, 1]])
  np.testing.assert_array_equal(out[p + "num_right_to_wrong"], [[1, 0, 0], [0, 0, 0]])
  np.testing.assert_allclose(out[p + "wrong_to_right"], [[0, 1, 0], [0, 1, 0.5]])
  np.testing.assert_allclose(out[p + "right_to_wrong"], [[0.5, 0, 0], [0, 0, 0]])
