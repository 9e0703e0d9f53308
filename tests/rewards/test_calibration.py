"""RC-Mean, RC-LWR, the length penalty, metrics (Spearman, pairwise accuracy) and features."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax import rewards as rw


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _planted(n, bias_fn, seed=0):
  """Integer lengths c (lognormal, 10..3000), r* ~ N(0, 1) independent of c, r = r* + b(c)."""
  rng = np.random.default_rng(seed)
  c = np.clip(np.round(np.exp(rng.normal(5.5, 0.8, n))), 10, 3000)
  r_star = rng.normal(0.0, 1.0, n)
  return c, r_star, r_star + bias_fn(c)


# ------------------------------------------------------------------------------ RC-Mean


def test_window_mean_by_hand(x64):
  c = jnp.array([1.0, 2.0, 3.0, 4.0, 10.0, 3.0])
  r = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 9.0])
  mean, count = rw.window_mean(jnp.array([1.0, 3.0, 10.0, 6.0, 5.0]), c, r, 1.0)
  # c0=1: {1, 2}; c0=3: {2, 3, 4, 3} (closed window); c0=10: {10}; c0=6: none; c0=5: {4}.
  np.testing.assert_allclose(mean[:3], [1.5, (2 + 3 + 4 + 9) / 4, 5.0])
  assert np.isnan(mean[3]) and mean[4] == 4.0
  np.testing.assert_array_equal(count, [2, 4, 1, 0, 1])


def test_rc_mean_pairs_by_hand(x64):
  # Pairs (c1, c2): (10, 14), (20, 28), (12, 12) -> d = mean(4, 8, 0) / 4 = 1.
  c1, c2 = jnp.array([10.0, 20.0, 12.0]), jnp.array([14.0, 28.0, 12.0])
  r1, r2 = jnp.array([1.0, 2.0, 3.0]), jnp.array([4.0, 5.0, 6.0])
  first, second = rw.rc_mean(r1, r2, c1, c2, ratio=4.0, min_count=2, alpha=0.5)
  assert float(first.half_width) == 1.0
  # Pooled c = [10, 20, 12, 14, 28, 12], r = [1, 2, 3, 4, 5, 6]. Windows c0 +/- 1:
  # 10 -> {10}: 1 point; 20 -> {20}; 12 -> {12, 12}: mean 4.5; 14 -> {14}; 28 -> {28}.
  np.testing.assert_array_equal(first.count, [1, 1, 2])
  np.testing.assert_array_equal(second.count, [1, 1, 2])
  np.testing.assert_allclose(first.bias, [1.0, 2.0, 4.5])
  # Only pair 3 has both windows >= 2: calibrated r - 0.5 * 4.5; the others are unchanged.
  np.testing.assert_array_equal(first.calibrated, [False, False, True])
  np.testing.assert_allclose(first.rewards, [1.0, 2.0, 3.0 - 2.25])
  np.testing.assert_allclose(second.rewards, [4.0, 5.0, 6.0 - 2.25])


def test_rc_mean_rows_partner_gate(x64):
  c = jnp.array([0.0, 0.0, 0.0, 5.0])
  r = jnp.array([1.0, 2.0, 3.0, 4.0])
  out = rw.rc_mean_rows(r, c, half_width=1.0, min_count=3, partner=jnp.array([3, -1, -1, 0]))
  # Row 0 has 3 points in its window but its partner (row 3) only 1: neither is calibrated.
  np.testing.assert_array_equal(out.calibrated, [False, True, True, False])
  np.testing.assert_allclose(out.rewards, [1.0, 0.0, 1.0, 4.0])


def test_rc_mean_recovers_planted_linear_bias(x64):
  c, _, r = _planted(6000, lambda c: 0.002 * c)
  out = rw.rc_mean_rows(r, c, half_width=15.0, min_count=20)
  ok = np.asarray(out.calibrated)
  err = np.abs(np.asarray(out.bias) - 0.002 * c)[ok]
  # Stated tolerance: mean |b_hat - b| < 0.08 over calibrated rows (noise sd 1, >= 20 points
  # per window, b spans ~3); over 80% of rows have a full window.
  assert ok.mean() > 0.8 and err.mean() < 0.08


# ------------------------------------------------------------------------------ RC-LWR


@pytest.mark.parametrize("name,bias_fn", [
    ("linear", lambda c: 0.002 * c),
    ("sigmoid", lambda c: 2.0 / (1.0 + np.exp(-(c - 250.0) / 60.0))),
])
def test_rc_lwr_recovers_planted_bias(x64, name, bias_fn):
  c, r_star, r = _planted(4000, bias_fn, seed=1)
  out = rw.rc_lwr(r, c, frac=0.3, it=3)
  err = np.abs(np.asarray(out.bias) - bias_fn(c))
  central = (c > np.quantile(c, 0.05)) & (c < np.quantile(c, 0.95))
  # Stated tolerance: b (range ~1.8 here) is recovered to mean |error| < 0.05 and max
  # |error| < 0.2 on the central 90% of lengths (noise sd 1, ~1200 points per window; the
  # sigmoid's curvature adds smoothing bias). After calibration reward no longer tracks length.
  assert err[central].mean() < 0.05, name
  assert err[central].max() < 0.2, name
  np.testing.assert_allclose(out.rewards, r - out.bias)
  assert rw.spearman(jnp.asarray(r), jnp.asarray(c)) > 0.3
  assert abs(float(rw.spearman(out.rewards, jnp.asarray(c)))) < 0.05


def test_rc_lwr_improves_pairwise_accuracy_under_length_bias(x64):
  # Chosen is truly better by 0.5 but shorter on average; the reward adds 0.004 * length.
  rng = np.random.default_rng(2)
  p = 1500
  c_w = np.round(np.exp(rng.normal(5.3, 0.6, p)))
  c_l = np.round(np.exp(rng.normal(5.7, 0.6, p)))
  r_w = 0.5 + rng.normal(size=p) + 0.004 * c_w
  r_l = rng.normal(size=p) + 0.004 * c_l
  out = rw.rc_lwr(np.concatenate([r_w, r_l]), np.concatenate([c_w, c_l]), frac=0.3)
  before = float(rw.pairwise_accuracy(r_w, r_l).mean())
  after = float(rw.pairwise_accuracy(out.rewards[:p], out.rewards[p:]).mean())
  assert after > before + 0.05


def test_calibrate_alpha_and_penalty(x64):
  r, c = jnp.array([1.0, 2.0, 3.0]), jnp.array([10.0, 20.0, 40.0])
  np.testing.assert_allclose(rw.calibrate(r, jnp.array([1.0, 1.0, 2.0]), alpha=0.5),
                             [0.5, 1.5, 2.0])
  pen = rw.length_penalty(r, c, lam=0.1)
  np.testing.assert_allclose(pen.rewards, [0.0, 0.0, -1.0])
  np.testing.assert_allclose(pen.bias, [1.0, 2.0, 4.0])


def test_lwr_on_top_of_penalty(x64):
  c, _, r = _planted(300, lambda c: 0.002 * c, seed=3)
  out = rw.rc_lwr_penalty(r, c, lam=0.001, frac=0.4, it=2, alpha=0.7)
  penalized = r - 0.001 * c
  b = rw.lowess(penalized, c, frac=0.4, it=2)
  np.testing.assert_allclose(out.bias, b)
  np.testing.assert_allclose(out.rewards, penalized - 0.7 * np.asarray(b))


# ----------------------------------------------------------------------------- metrics


def test_pairwise_accuracy_tie_is_wrong():
  np.testing.assert_array_equal(
      rw.pairwise_accuracy(jnp.array([2.0, 1.0, 1.0]), jnp.array([1.0, 1.0, 3.0])), [1, 0, 0])


def test_spearman_and_ranks_by_hand(x64):
  np.testing.assert_allclose(rw.rankdata(jnp.array([10.0, 20.0, 10.0, 5.0])), [2.5, 4, 2.5, 1])
  a = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
  assert float(rw.spearman(a, a ** 3)) == pytest.approx(1.0)
  assert float(rw.spearman(a, -a)) == pytest.approx(-1.0)
  assert np.isnan(float(rw.spearman(a, jnp.ones(5))))


def test_spearman_matches_scipy(x64):
  stats = pytest.importorskip("scipy.stats", reason="scipy is the Spearman reference")
  rng = np.random.default_rng(4)
  a = rng.integers(0, 12, 500).astype(float)  # many ties
  b = a + rng.normal(0.0, 4.0, 500).round()
  np.testing.assert_allclose(rw.rankdata(jnp.asarray(a)), stats.rankdata(a))
  assert float(rw.spearman(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(
      stats.spearmanr(a, b).statistic, abs=1e-12)


# ----------------------------------------------------------------------------- features


def test_length_features():
  texts = ["héllo world", "", "  a  b\tc\n"]
  np.testing.assert_array_equal(rw.char_length(texts), [11, 0, 9])
  np.testing.assert_array_equal(rw.token_length(texts), [2, 0, 3])
  np.testing.assert_array_equal(rw.token_length(texts, tokenize=list), [11, 0, 9])
  assert rw.features.get("chars") is rw.char_length
  with pytest.raises(ValueError, match="already registered"):
    rw.features.register("chars", rw.char_length)
  with pytest.raises(KeyError, match="unknown feature"):
    rw.features.get("nope")


def test_markdown_counts():
  text = "\n".join([
      "# Title", "Some **bold** and __also bold__ text.", "## Sub", "- item one",
      "* item two", "1. numbered", "---", "```python", "# not a header", "- not a list",
      "```", "#hashtag is not a header", "end **x**",
  ])
  assert rw.markdown_counts(text) == {"headers": 2, "list_items": 3, "bold": 3,
                                      "code_blocks": 1}
  np.testing.assert_array_equal(rw.markdown_elements([text, "plain"]), [9, 0])


def test_frac_for_ties_gives_every_tie_group_a_local_mean_not_one_sample():
  # 70% of the points share one length: at frac 0.3 that length's window has radius 0 and
  # LOWESS falls back to the reward of one tied point (the first in sort order), so the bias
  # of the whole group changes when the tied points are reordered.
  rng = np.random.default_rng(0)
  n = 200
  x = np.where(rng.random(n) < 0.7, 5.0, rng.integers(6, 40, n).astype(np.float64))
  y = (0.1 * x + rng.normal(size=n)).astype(np.float64)
  tied = np.flatnonzero(x == 5.0)
  largest = tied.size
  frac = rw.frac_for_ties(x, 0.3)
  assert rw.num_neighbours(n, frac) == largest + 1
  assert rw.frac_for_ties(x, 0.9) == 0.9             # never lowers the caller's fraction
  assert rw.frac_for_ties(np.arange(10.0), 0.3) == 0.3   # no ties: unchanged
  perm = rng.permutation(n)
  for f, order_free in ((0.3, False), (frac, True)):
    b = np.asarray(rw.rc_lwr(y, x, frac=f, it=0).bias)[tied]
    b_perm = np.asarray(rw.rc_lwr(y[perm], x[perm], frac=f, it=0).bias)
    b_perm = b_perm[np.argsort(perm)][tied]
    assert np.allclose(b, b[0])                        # one value per tie group either way
    if order_free:
      np.testing.assert_allclose(b_perm, b, rtol=1e-5)
      # the local fit at the tie group is close to the group's mean reward
      assert abs(b[0] - y[tied].mean()) < 0.1
    else:                                              # one sample's reward, order-dependent
      assert np.any(np.isclose(b[0], y[tied]))
      assert not np.allclose(b_perm, b)
