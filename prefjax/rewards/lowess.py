"""LOWESS (robust locally weighted linear regression), statsmodels-exact, in jitted JAX.

The fit at x0 is a weighted least-squares line through the k = int(frac * n + 1e-10)
(clamped to [2, n]) nearest points, evaluated at x0:

  h(x0)  = radius of the k-point window (see ``_window_radius``)
  w_j    = tricube(|x_j - x0| / h) * r_j,   tricube(u) = (1 - u^3)^3 for u < 1, else 0
  xbar   = sum w x / sum w,  var = sum w (x - xbar)^2 / sum w  (floored at 1e-12)
  b(x0)  = ybar + (x0 - xbar) * [sum w (x - xbar) y / sum w] / var

r_j = 1 on the first pass; each of the ``it`` robustifying passes sets
r_j = bisquare(min(|y_j - b(x_j)| / (6 * median |y - b|), 1)), bisquare(u) = (1 - u^2)^2
(if the median residual is 0: r_j = 1 where the residual is 0, else 0). When fewer than two
window points have weight > 1e-12, or h = 0, the fit falls back to y at that point.

Exactness and speed. Points with the same x get the same weights and the same fit, so the
weighted sums above aggregate exactly per distinct x value (sum r_j and sum r_j y_j per
value). With G distinct values (integer lengths: G << n) a pass costs O(A * W) for A fitted
values whose windows span at most W distinct values (W <= G), plus O(n) to aggregate, scatter
the fits back and take the median (radix select, no sort); the window radius comes from one
searchsorted over the sorted x. The host sorts once (O(n log n), numpy).

* ``delta`` = 0 (the default) fits every distinct value (A = G): exact and fast for
  discrete features such as character or token counts.
* ``delta`` > 0, for continuous x (G ~ n): only statsmodels' anchor points are fitted (each
  next anchor is the last point within ``delta`` of the previous one) and the points between
  are linearly interpolated, exactly as statsmodels does, so A ~ range(x) / delta. Continuous
  x with ``delta`` = 0 is still exact but costs O(n * k) per pass.

The results agree with ``statsmodels.nonparametric.lowess(y, x, frac, it, delta,
return_sorted=False)`` to rounding in float64. Float32 inputs with non-integer x are fitted
in float64 (x64 enabled locally for the call, result cast back): in float32 a long-tailed
continuous feature (lognormal sigma 1.5, 300k points) is off by ~1e-3, in float64 by ~1e-12.
Integer x stays in float32 (exact aggregation per value; within 1e-4). Known differences: statsmodels drops non-finite
points (this raises); where a window's weight sits on one x value other than x0, statsmodels
returns rounding noise scaled by 1e12 (var floored at 1e-12) while this returns the exact
weighted mean. The fallback "y at that point" takes the tied point that ``np.argsort`` puts
first, the same call statsmodels makes, so ties resolve the same way.

References:
  Cleveland, "Robust Locally Weighted Regression and Smoothing Scatterplots", JASA 74 (1979).
  Huang et al., "Post-hoc Reward Calibration: A Case Study on Length Bias", arXiv 2409.17407.
  statsmodels/nonparametric/_smoothers_lowess.pyx (the rules transcribed here).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Elements of one [anchors, groups] block: small enough to stay in cache (fastest on CPU).
_BLOCK_ELEMS = 1 << 16
# Up to ~this many delta anchors are found one binary search at a time, not for all n points.
_FEW_ANCHORS = 4096
_MIN_WEIGHT = 1e-12  # statsmodels: a weight counts as non-zero only above this
_MIN_VAR = 1e-12  # statsmodels: floor of the weighted x-variance


def num_neighbours(n: int, frac: float) -> int:
  """Window size k = int(frac * n + 1e-10), clamped to [2, n] (statsmodels' rule)."""
  k = int(frac * n + 1e-10)
  return min(max(k, 2), n)


def _delta_anchors(xs: np.ndarray, delta: float, group_end=None) -> np.ndarray:
  """Sorted indices statsmodels fits at when ``delta`` > 0 (``update_indices``).

  From anchor i, ties of x[i] copy its fit; k is the first index with x[k] > x[i] + delta
  (or n - 1 if there is none), and the next anchor is max(k - 1, last tie of x[i] + 1).
  Few anchors (range / delta small, the usual case): two binary searches per anchor; many:
  the searches for every point at once (``group_end``: last index of each point's tie group).
  """
  n = xs.size
  if group_end is None:
    def last_tie(i):
      return int(np.searchsorted(xs, xs[i], side="right")) - 1

    def beyond(i):
      return int(np.searchsorted(xs, xs[i] + delta, side="right"))
  else:
    first_beyond, group_end = (np.searchsorted(xs, xs + delta, side="right").tolist(),
                               group_end.tolist())
    last_tie, beyond = group_end.__getitem__, first_beyond.__getitem__
  anchors = []
  i = 0
  while True:
    anchors.append(i)
    last = last_tie(i)
    if last >= n - 1:
      break
    k = min(beyond(i), n - 1)
    i = max(k - 1, last + 1)
  return np.asarray(anchors, dtype=np.int32)


def _bucket(m: int, minimum: int = 256) -> int:
  """Padded size for m: >= minimum, then 8 steps per octave (<= 12.5% padding). Padding
  shapes to buckets lets calls of similar size share one compiled kernel."""
  if m <= minimum:
    return minimum
  step = max(1, 1 << (m.bit_length() - 4))  # 1/8 of the octave [2^e, 2^(e+1)) holding m
  return -(-m // step) * step


def _plan(x, delta, k):
  """Host-side integer structure: sort order, tie groups, anchors, windows, interpolation.

  Every array is padded to a bucketed size: padded points sit in a trailing dummy group with
  zero weight, padded groups are empty, padded anchors repeat the last one. Anchors are
  processed in blocks; a block only looks at the ``width`` groups from its ``block_start``,
  which cover the k-point windows of all its anchors (plus a margin of 2 groups each side).
  """
  x64 = np.asarray(x, dtype=np.float64)
  n = x64.size
  order = np.argsort(x64)  # the call statsmodels makes, so ties land in the same order
  xs = x64[order]
  new_group = np.ones(n, dtype=bool)
  new_group[1:] = xs[1:] != xs[:-1]
  seg = np.cumsum(new_group, dtype=np.int64) - 1
  starts = np.flatnonzero(new_group)
  if delta == 0.0:
    anchors = starts  # every distinct value is fitted
  else:
    few = (xs[-1] - xs[0]) / delta < _FEW_ANCHORS
    # last index of each point's tie group (only for the many-anchor search)
    group_end = None if few else np.append(starts[1:], n)[seg] - 1
    anchors = _delta_anchors(xs, delta, group_end)
  prev = np.zeros(n, dtype=np.int64)  # the last anchor at or before each point
  prev[anchors] = 1
  prev = np.cumsum(prev) - 1
  nxt = np.minimum(prev + 1, anchors.size - 1)
  inverse = np.empty(n, dtype=np.int32)
  inverse[order] = np.arange(n, dtype=np.int32)

  # Each anchor's window [l, l + k) (see _window_radius) in group indices.
  left = np.searchsorted((xs[: n - k] + xs[k:]) / 2.0, xs[anchors], side="left")
  g_lo, g_hi = seg[left] - 2, seg[left + k - 1] + 2
  n_pad = _bucket(n)
  g_pad = _bucket(starts.size + 1)  # + 1: the dummy group of the padded points
  a_pad = _bucket(anchors.size, minimum=256 if g_pad <= 16384 else 16)
  width = min(_bucket(int((g_hi - g_lo).max()) + 1), g_pad)
  block = max(1, min(a_pad, _BLOCK_ELEMS // width))
  block = 1 << (block.bit_length() - 1)  # a power of two, so it divides the bucket sizes
  a_pad = -(-a_pad // block) * block
  # Windows only move right with x0: a block's union is [first anchor's lo, last's hi].
  lo_b = np.append(g_lo, np.full(a_pad - anchors.size, g_lo[-1]))[::block]
  hi_b = np.append(g_hi, np.full(a_pad - anchors.size, g_hi[-1]))[block - 1::block]
  if width < g_pad and (hi_b - lo_b).max() + 1 > width:
    width = min(_bucket(int((hi_b - lo_b).max()) + 1), g_pad)
  block_start = np.clip(lo_b, 0, g_pad - width)

  def pad(a, size, value):
    return np.concatenate([a, np.full(size - a.size, value, a.dtype)]).astype(np.int32)

  return dict(n=n, n_pad=n_pad, block=block, width=width, order=order, inverse=inverse,
              seg=pad(seg, n_pad, g_pad - 1), group_first=pad(starts, g_pad, n - 1),
              anchors=pad(anchors, a_pad, anchors[-1]), prev=pad(prev, n_pad, 0),
              nxt=pad(nxt, n_pad, 0), block_start=block_start.astype(np.int32))


def _window_radius(xs, x0, n, k):
  """Radius of statsmodels' k-point window around each x0 (``update_neighborhood``).

  The window [l, l + k) over sorted x starts at l = #{l < n - k : (x[l] + x[l+k]) / 2 < x0}
  and h = max(x0 - x[l], x[l+k-1] - x0). Every point outside the window is at least h
  away, and a tie group cut by the window edge sits at exactly h (tricube weight 0), so
  weighting all points by tricube(|x - x0| / h) reproduces the window fit exactly.
  n and k may be traced: midpoints from n - k on are +inf, which never count.
  """
  size = xs.shape[0]
  idx = jnp.arange(size)
  mid = jnp.where(idx < n - k, (xs + xs[jnp.minimum(idx + k, size - 1)]) / 2.0, jnp.inf)
  left = jnp.searchsorted(mid, x0, side="left")  # mid is non-decreasing
  return jnp.maximum(x0 - xs[left], xs[left + k - 1] - x0)


def _fit_block(x0, h, y_fallback, gx, g_w, g_wy, g_max1, g_max2):
  """Local linear fits at a block of anchors from per-group sums.

  Args:
    x0, h, y_fallback: ``[Ab]`` anchor x, window radius, and y used if the fit fails.
    gx: ``[G]`` distinct x values.
    g_w, g_wy: ``[G]`` sums of r_j and r_j * y_j over each group.
    g_max1, g_max2: ``[G]`` largest and second-largest r_j in each group (0 if none).

  Returns:
    ``[Ab]`` fitted values.
  """
  d_ag = gx[None, :] - x0[:, None]  # centred at x0 so float32 sums stay well conditioned
  safe_h = jnp.where(h > 0, h, 1.0)[:, None]
  u_ag = jnp.abs(d_ag) / safe_h
  t_ag = 1.0 - u_ag * u_ag * u_ag
  t_ag = jnp.where(u_ag < 1.0, t_ag * t_ag * t_ag, 0.0)  # tricube; 0 on and beyond h
  # The five weighted sums as elementwise products reduced over groups: XLA fuses them with
  # the tricube into one pass over [Ab, G] (as matmuls [Ab, G] @ [G, 2] the weights would be
  # materialised first: ~3x slower on CPU), and no reduced-precision (TF32) matmul can occur.
  tw, twy = t_ag * g_w, t_ag * g_wy
  s0, t0 = tw.sum(1), twy.sum(1)
  s1, t1 = (tw * d_ag).sum(1), (twy * d_ag).sum(1)
  s2 = (tw * d_ag * d_ag).sum(1)
  # Points with weight > 1e-12; monotone in r_j, so each group's top two decide "at least 2".
  n_pos = ((t_ag * g_max1 > _MIN_WEIGHT).astype(jnp.int32)
           + (t_ag * g_max2 > _MIN_WEIGHT).astype(jnp.int32)).sum(1)
  # All weight on one x value: the slope is 0/0. statsmodels then returns rounding noise
  # times 1e12 (its variance floor); the exact limit is the weighted mean.
  one_value = (t_ag * g_w > 0).sum(1) < 2
  ok = (h > 0) & (n_pos >= 2)
  s0 = jnp.where(ok, s0, 1.0)
  xbar = s1 / s0  # offset of the weighted mean from x0
  ybar = t0 / s0
  var = jnp.maximum(s2 / s0 - xbar * xbar, _MIN_VAR)
  cov = t1 / s0 - xbar * ybar
  slope_term = jnp.where(one_value, 0.0, xbar * cov / var)
  return jnp.where(ok, ybar - slope_term, y_fallback)


def _group_stats(r, yc, seg, num_groups):
  """Per-group sum r, sum r*y, and the two largest r (exact aggregation over ties)."""
  seg_sum = functools.partial(jax.ops.segment_sum, segment_ids=seg,
                              num_segments=num_groups, indices_are_sorted=True)
  seg_max = functools.partial(jax.ops.segment_max, segment_ids=seg,
                              num_segments=num_groups, indices_are_sorted=True)
  g_w = seg_sum(r)
  g_wy = seg_sum(r * yc)
  g_max1 = seg_max(r)
  idx = jnp.arange(r.shape[0])
  first_max = jax.ops.segment_min(jnp.where(r == g_max1[seg], idx, r.shape[0]), seg,
                                  num_segments=num_groups, indices_are_sorted=True)
  g_max2 = seg_max(jnp.where(idx == first_max[seg], -1.0, r))
  return g_w, g_wy, jnp.maximum(g_max1, 0.0), jnp.maximum(g_max2, 0.0)


def _kth_smallest(v, k, valid):
  """Exact k-th smallest (0-based) of the valid entries of non-negative ``[n]`` v.

  Radix select on the float bit patterns (for non-negative floats their order is the
  integer order): 16 bits per pass, one scatter-add histogram each, so O(n) per pass
  instead of a full sort (XLA's CPU sort is ~50x slower here).
  """
  itype, nbits = (jnp.int64, 64) if v.dtype == jnp.float64 else (jnp.int32, 32)
  bits = jax.lax.bitcast_convert_type(v, itype)
  prefix = jnp.zeros((), itype)
  for shift in range(nbits - 16, -1, -16):
    match = valid
    if shift + 16 < nbits:  # only entries whose higher digits equal the prefix so far
      match = valid & ((bits >> (shift + 16)) == (prefix >> (shift + 16)))
    digit = ((bits >> shift) & 0xFFFF).astype(jnp.int32)
    hist = jnp.zeros(1 << 16, jnp.int32).at[jnp.where(match, digit, 1 << 16)].add(
        1, mode="drop")
    cum = jnp.cumsum(hist)
    d = jnp.searchsorted(cum, k + 1, side="left").astype(jnp.int32)
    k = k - jnp.where(d > 0, cum[jnp.maximum(d - 1, 0)], 0)
    prefix = prefix | (d.astype(itype) << shift)
  return jax.lax.bitcast_convert_type(prefix, v.dtype)


def _median(v, valid, n):
  """np.median of the n valid entries of non-negative v (mean of the middle two if n even)."""
  lo = _kth_smallest(v, (n - 1) // 2, valid)
  enough = jnp.sum(valid & (v <= lo)) >= n // 2 + 1  # the upper middle is lo again
  hi = jnp.where(enough, lo, jnp.min(jnp.where(valid & (v > lo), v, jnp.inf)))
  return (lo + hi) / 2.0


def _robust_weights(yc, fit, valid, n):
  """bisquare(min(|resid| / (6 median |resid|), 1)); 0/1 indicator if the median is 0."""
  resid = jnp.abs(yc - fit)
  med = _median(resid, valid, n)
  scaled = jnp.where(med == 0, (resid > 0).astype(resid.dtype), resid / (6.0 * med))
  scaled = jnp.minimum(scaled, 1.0)
  b = 1.0 - scaled * scaled
  return jnp.where(valid, b * b, 0.0)


@functools.partial(jax.jit, static_argnames=("block", "width"))
def _lowess_sorted(ys, xs, seg, group_first, anchors, block_start, prev, nxt, n, k, it, *,
                   block, width):
  """LOWESS on x-sorted, padded data (see ``_plan``); returns ``[n_pad]`` sorted fits."""
  num_groups = group_first.shape[0]
  valid = jnp.arange(ys.shape[0]) < n
  shift = jnp.where(valid, ys, 0.0).sum() / n  # LOWESS is shift-equivariant in y
  yc = jnp.where(valid, ys - shift, 0.0)  # centred: keeps float32 sums well conditioned
  gx = xs[group_first]  # [G]
  x0 = xs[anchors]  # [A]
  h = _window_radius(xs, x0, n, k)
  yfb = yc[anchors]
  x0_b, h_b, yfb_b = (a.reshape(-1, block) for a in (x0, h, yfb))
  xa, xb = x0[prev], x0[nxt]
  lam = jnp.where(xb > xa, (xs - xa) / jnp.where(xb > xa, xb - xa, 1.0), 0.0)

  def fit(r):
    group_arrays = (gx, *_group_stats(r, yc, seg, num_groups))

    def fit_block(args):
      *anchor_args, start = args
      window = (jax.lax.dynamic_slice(a, (start,), (width,)) for a in group_arrays)
      return _fit_block(*anchor_args, *window)

    f_a = jax.lax.map(fit_block, (x0_b, h_b, yfb_b, block_start))
    f_a = f_a.reshape(-1)
    fa, fb = f_a[prev], f_a[nxt]
    # Ties of an anchor copy its fit; other points interpolate linearly (statsmodels' delta).
    return jnp.where(xs == xa, fa, lam * fb + (1.0 - lam) * fa)

  def step(i, carry):
    r, _ = carry
    f = fit(r)
    # The weights after the last fit are never used: skip that median.
    r = jax.lax.cond(i < it, lambda: _robust_weights(yc, f, valid, n), lambda: r)
    return r, f

  r0 = valid.astype(ys.dtype)
  _, f = jax.lax.fori_loop(0, it + 1, step, (r0, r0))
  return f + shift


def lowess(y, x, *, frac: float = 2.0 / 3.0, it: int = 3, delta: float = 0.0):
  """Robust LOWESS fit of y on x, evaluated at every x (statsmodels-exact).

  b(x0) = ybar_w + (x0 - xbar_w) * cov_w(x, y) / max(var_w(x), 1e-12), with weights
  w_j = tricube(|x_j - x0| / h(x0)) * r_j over the k = int(frac * n) nearest points and
  bisquare robust weights r_j re-estimated ``it`` times (see the module docstring).

  Args:
    y: ``[N]`` responses (e.g. rewards).
    x: ``[N]`` feature (e.g. lengths); any order, ties allowed.
    frac: fraction of points in each local window, in [0, 1].
    it: number of robustifying iterations (0 = plain local linear fit).
    delta: fit only at points more than ``delta`` apart and interpolate the rest (as
      statsmodels); 0 fits every distinct x. Use ~0.01 * range(x) for large continuous x.

  Returns:
    ``[N]`` fitted values in the input order, dtype of ``y`` (float32 unless x64 is on).

  Example:
    >>> x = jnp.arange(10.0); lowess(2.0 * x + 1.0, x, frac=0.5)  # == 2x + 1

  Raises:
    ValueError: on shape mismatch, non-finite values, frac outside [0, 1], it < 0 or
      delta < 0.
  """
  if not 0.0 <= frac <= 1.0:
    raise ValueError(f"lowess: frac must be in [0, 1], got {frac}")
  if it < 0 or int(it) != it:
    raise ValueError(f"lowess: it must be a non-negative integer, got {it}")
  if not delta >= 0.0:
    raise ValueError(f"lowess: delta must be >= 0, got {delta}")
  x_host = np.asarray(x)
  y_arr = jnp.asarray(y)
  if not jnp.issubdtype(y_arr.dtype, jnp.floating):
    y_arr = y_arr.astype(jnp.result_type(float))
  if x_host.ndim != 1 or y_arr.ndim != 1 or x_host.shape != y_arr.shape:
    raise ValueError(f"lowess: x and y must be 1-D of equal length, got {x_host.shape} "
                     f"and {y_arr.shape}")
  n = x_host.size
  if n == 0:
    return y_arr
  if not (np.all(np.isfinite(x_host)) and bool(jnp.all(jnp.isfinite(y_arr)))):
    raise ValueError("lowess: x and y must be finite (drop NaN/inf rows first)")
  k = num_neighbours(n, frac)
  plan = _plan(x_host, float(delta), k)
  if y_arr.dtype == jnp.float64 or not np.any(x_host != np.round(x_host)):
    return _fit_planned(plan, x_host, y_arr, n, k, int(it))
  # Continuous x in float32 loses ~1e-3 against statsmodels on long-tailed features (window
  # edges and x-variances of large, finely spaced x): fit those in float64.
  with jax.enable_x64(True):
    fit = _fit_planned(plan, x_host, jnp.asarray(np.asarray(y_arr, np.float64)), n, k, int(it))
    fit = np.asarray(fit)
  return jnp.asarray(fit.astype(y_arr.dtype))


def _fit_planned(plan, x_host, y_arr, n, k, it):
  """Runs the jitted fit on sorted, padded copies of x and y; fits in input order."""
  order, pad = plan["order"], plan["n_pad"] - n
  xs = np.asarray(x_host[order], dtype=y_arr.dtype)
  xs = jnp.asarray(np.concatenate([xs, np.full(pad, xs[-1], xs.dtype)]))
  ys = jnp.concatenate([y_arr[order], jnp.zeros((pad,), y_arr.dtype)])
  fit = _lowess_sorted(ys, xs, plan["seg"], plan["group_first"], plan["anchors"],
                       plan["block_start"], plan["prev"], plan["nxt"], n, k, it,
                       block=plan["block"], width=plan["width"])
  return fit[plan["inverse"]]
