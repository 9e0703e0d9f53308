"""LOWESS: exact identities, and parity with statsmodels (float64 1e-6, float32 1e-4 relative)."""
import jax
import numpy as np
import pytest

from prefjax.rewards.lowess import _FEW_ANCHORS, _delta_anchors, _plan, lowess, num_neighbours


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _sm_lowess():
  sm = pytest.importorskip("statsmodels.nonparametric.smoothers_lowess",
                           reason="statsmodels is the LOWESS reference")
  return sm.lowess


def _reference(y, x, frac, it, delta=0.0):
  with np.errstate(invalid="ignore", divide="ignore"):  # statsmodels divides 0/0 (radius 0)
    return _sm_lowess()(y, x, frac=frac, it=it, delta=delta, return_sorted=False)


def _data(kind, n, seed):
  """Unsorted x: continuous, integer lengths (many ties) or four values (huge tie groups)."""
  rng = np.random.default_rng(seed)
  if kind == "continuous":
    x = rng.uniform(0.0, 10.0, n)
  elif kind == "lengths":
    x = np.clip(np.round(np.exp(rng.normal(4.0, 0.8, n))), 5, 600)
  else:
    x = rng.integers(0, 4, n).astype(np.float64)
  y = np.sin(x / 3.0) + 0.002 * x + rng.normal(0.0, 0.5, n)
  outliers = rng.choice(n, n // 25, replace=False)
  y[outliers] += rng.normal(0.0, 8.0, outliers.size)  # heavy tails for the robust passes
  return x, y


# --------------------------------------------------------------- identities (no statsmodels)


def test_window_size_rule():
  assert num_neighbours(100, 0.3) == 30
  assert num_neighbours(10, 0.29999999999) == 3  # int(frac * n + 1e-10): rounds up near ints
  assert num_neighbours(10, 0.05) == 2  # at least 2
  assert num_neighbours(1, 1.0) == 1  # at most n


def test_line_is_reproduced_exactly(x64):
  x = np.random.default_rng(0).permutation(np.arange(40.0))
  np.testing.assert_allclose(lowess(3.0 * x - 2.0, x, frac=0.25, it=3), 3.0 * x - 2.0,
                             atol=1e-9)


def test_ties_share_one_fit_and_shift_equivariance(x64):
  x, y = _data("lengths", 300, 1)
  fit = np.asarray(lowess(y, x, frac=0.3))
  for value in np.unique(x):
    assert np.ptp(fit[x == value]) == 0.0
  np.testing.assert_allclose(lowess(y + 100.0, x, frac=0.3), fit + 100.0, atol=1e-9)


def test_invalid_arguments():
  x = np.arange(5.0)
  with pytest.raises(ValueError, match="frac"):
    lowess(x, x, frac=1.5)
  with pytest.raises(ValueError, match="finite"):
    lowess(np.array([0.0, np.nan, 1.0, 2.0, 3.0]), x)
  with pytest.raises(ValueError, match="equal length"):
    lowess(x[:4], x)


def test_all_weight_on_one_other_value_gives_weighted_mean(x64):
  # k = 5: x0 = 0's window is {0, 0, 1, 1, 2} with radius 2, so x = 2 has weight 0. The two
  # points at x = 0 (y = +-50) fit to ~0 on the first pass and become outliers (robust weight
  # 0), so on the second pass all weight sits on x = 1: the slope is 0/0 and the exact limit is
  # the weighted mean of y at x = 1, i.e. 1. (With unequal y there, statsmodels returns
  # rounding noise divided by its 1e-12 variance floor, so parity data avoids this case.)
  x = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0])
  y = np.array([50.0, -50.0, 1.0, 1.0, 0.0, 0.05, -0.02, 0.1, -0.07, 0.03, 0.0])
  fit = np.asarray(lowess(y, x, frac=0.5, it=1))
  np.testing.assert_allclose(fit[:2], 1.0, atol=1e-12)


# ------------------------------------------------------------------- statsmodels parity


@pytest.mark.parametrize("kind,n", [("continuous", 180), ("lengths", 250), ("few", 120)])
def test_parity_float64(x64, kind, n):
  x, y = _data(kind, n, seed=n)
  for frac in (0.1, 0.3, 2.0 / 3.0, 1.0):
    for it in (0, 1, 3):
      np.testing.assert_allclose(lowess(y, x, frac=frac, it=it), _reference(y, x, frac, it),
                                 rtol=0, atol=1e-6, err_msg=f"{kind} frac={frac} it={it}")


def test_parity_float64_windowed(x64):
  # Many distinct x and a small frac: each block of anchors only reads a slice of the values.
  x, y = _data("continuous", 1500, seed=9)
  for frac, it in ((0.05, 3), (0.2, 1)):
    plan = _plan(x, 0.0, num_neighbours(x.size, frac))
    assert plan["width"] < plan["group_first"].size  # the windowed path is exercised
    np.testing.assert_allclose(lowess(y, x, frac=frac, it=it), _reference(y, x, frac, it),
                               rtol=0, atol=1e-6, err_msg=f"frac={frac} it={it}")


@pytest.mark.parametrize("kind", ["continuous", "lengths"])
def test_parity_float64_delta(x64, kind):
  x, y = _data(kind, 300, seed=3)
  for delta in (0.02 * np.ptp(x), 0.2 * np.ptp(x)):
    np.testing.assert_allclose(lowess(y, x, frac=0.3, it=3, delta=delta),
                               _reference(y, x, 0.3, 3, delta), rtol=0, atol=1e-6,
                               err_msg=f"delta={delta}")


@pytest.mark.parametrize("kind", ["continuous", "lengths"])
def test_delta_anchor_searches_agree(kind):
  # Few anchors: two binary searches per anchor; many: all points searched at once.
  x, _ = _data(kind, 2000, seed=4)
  xs = np.sort(x)
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  seg = np.cumsum(np.r_[True, xs[1:] != xs[:-1]]) - 1
  group_end = np.append(starts[1:], xs.size)[seg] - 1
  for delta in (1e-5 * np.ptp(x), 0.003 * np.ptp(x), 0.3 * np.ptp(x)):
    np.testing.assert_array_equal(_delta_anchors(xs, delta), _delta_anchors(xs, delta, group_end))


def test_parity_float64_many_delta_anchors(x64):
  # range / delta above the few-anchor threshold: the vectorised anchor search.
  x, y = _data("continuous", 1200, seed=6)
  delta = np.ptp(x) / 10_000
  plan = _plan(x, delta, num_neighbours(x.size, 0.3))
  assert np.ptp(x) / delta >= _FEW_ANCHORS
  assert plan["anchors"].size > 1000
  np.testing.assert_allclose(lowess(y, x, frac=0.3, it=2, delta=delta),
                             _reference(y, x, 0.3, 2, delta), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["continuous", "lengths"])
def test_parity_float32(kind):
  x, y = _data(kind, 300, seed=5)
  ref = _reference(y, x, 0.3, 3)
  fit = np.asarray(lowess(y.astype(np.float32), x.astype(np.float32), frac=0.3, it=3))
  assert fit.dtype == np.float32
  np.testing.assert_allclose(fit, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_parity_degenerate_neighbourhoods(x64):
  # A tie group larger than the window (radius 0: the fit falls back to y of the first tied
  # point in np.argsort order), isolated far points (window of one value plus zero weights),
  # and tiny n where k is clamped to 2 or to n.
  rng = np.random.default_rng(11)
  x = np.concatenate([np.full(30, 5.0), [0.0, 1.0, 2.0, 50.0, 51.0, 200.0],
                      rng.integers(6, 20, 40).astype(float)])
  x = rng.permutation(x)
  y = rng.normal(size=x.size)
  for frac, it in ((0.1, 0), (0.1, 3), (0.3, 2), (0.02, 1)):
    np.testing.assert_allclose(lowess(y, x, frac=frac, it=it), _reference(y, x, frac, it),
                               rtol=0, atol=1e-6, err_msg=f"frac={frac} it={it}")
  for n in (1, 2, 3, 5):
    xs, ys = rng.normal(size=n), rng.normal(size=n)
    np.testing.assert_allclose(lowess(ys, xs, frac=0.5, it=2), _reference(ys, xs, 0.5, 2),
                               rtol=0, atol=1e-6, err_msg=f"n={n}")


def test_float32_long_tailed_continuous_with_delta_matches_statsmodels():
  """Continuous x is fitted in float64 internally: float32 output within 1e-4 of statsmodels.

  (Fitting this in float32 is off by ~1e-3: large, finely spaced x.)
  """
  rng = np.random.default_rng(3)
  n = 20000
  x = np.exp(rng.normal(5.5, 1.5, n))                       # lognormal: range ~ 1e5
  y = 1.5 / (1.0 + np.exp(-(x - 400.0) / 150.0)) + 0.0005 * x + rng.normal(0.0, 1.0, n)
  delta = 0.01 * (x.max() - x.min())
  got = lowess(np.float32(y), x, frac=0.3, it=3, delta=delta)
  assert got.dtype == np.float32
  ref = _reference(y, x, 0.3, 3, delta)
  np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4)
