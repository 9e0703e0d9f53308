"""Advantage estimators against plain-numpy transcriptions of their formulas."""
import jax
import numpy as np
import pytest

from prefjax.errors import ConfigError
from prefjax.rl import advantages as adv_lib


def np_gae(r, v, m, gamma, lam):
  """Textbook GAE, row by row over the completion span only (terminal after its last token)."""
  b, t = r.shape
  adv = np.zeros((b, t))
  for i in range(b):
    idx = np.nonzero(m[i])[0]
    last = 0.0
    for k in reversed(range(len(idx))):
      tt = idx[k]
      nv = v[i, idx[k + 1]] if k + 1 < len(idx) else 0.0
      delta = r[i, tt] + gamma * nv - v[i, tt]
      last = delta + gamma * lam * last
      adv[i, tt] = last
  return adv, (adv + v) * m


def _rows():
  # Row 0: prompt (0..2), completion 3..6, end token at 6, padding after (end mid-row).
  # Row 1: completion runs to the last column (end token at the end of the row).
  # Row 2: a single-token completion.
  m = np.zeros((3, 10), np.float32)
  m[0, 3:7] = 1
  m[1, 2:10] = 1
  m[2, 5] = 1
  rng = np.random.default_rng(0)
  r = rng.normal(size=m.shape).astype(np.float32) * m
  v = rng.normal(size=m.shape).astype(np.float32)
  return r, v, m


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_numpy(gamma, lam):
  r, v, m = _rows()
  a, ret = adv_lib.gae(r, v, m, gamma=gamma, lam=lam)
  ea, eret = np_gae(r, v * m, m, gamma, lam)
  np.testing.assert_allclose(a, ea, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ret, eret, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(a)[m == 0] == 0)


def test_gae_lambda_one_gamma_one_is_return_to_go_minus_value():
  r, v, m = _rows()
  a, ret = adv_lib.gae(r, v, m, gamma=1.0, lam=1.0)
  rtg = np.flip(np.cumsum(np.flip(r * m, 1), 1), 1) * m
  np.testing.assert_allclose(a, rtg - v * m, atol=1e-5)
  np.testing.assert_allclose(ret, rtg, atol=1e-5)


def test_gae_terminal_ignores_values_after_the_end_token():
  r, v, m = _rows()
  v2 = v.copy()
  v2[0, 7:] = 1e3           # values past row 0's end token must not leak in
  a1, _ = adv_lib.gae(r, v, m)
  a2, _ = adv_lib.gae(r, v2, m)
  np.testing.assert_allclose(a1, a2)


def _scores(group_size=4, groups=3, seed=1):
  rng = np.random.default_rng(seed)
  b, t = group_size * groups, 6
  m = np.zeros((b, t), np.float32)
  for i in range(b):
    m[i, 1:1 + rng.integers(1, t)] = 1
  r = np.zeros((b, t), np.float32)
  s = rng.normal(size=b).astype(np.float32)
  last = [np.nonzero(m[i])[0][-1] for i in range(b)]
  r[np.arange(b), last] = s
  return r, m, s


def test_grpo_dr_grpo_rloo_closed_forms():
  r, m, s = _scores()
  g = s.reshape(3, 4)
  mean, std = g.mean(1, keepdims=True), g.std(1, keepdims=True)
  want = {
      "grpo": ((g - mean) / (std + 1e-6)).reshape(-1),
      "dr_grpo": (g - mean).reshape(-1),
      "rloo": np.array([[g[i, j] - np.mean(np.delete(g[i], j)) for j in range(4)]
                        for i in range(3)]).reshape(-1),
  }
  for name, w in want.items():
    a, _ = adv_lib.compute_advantages(name, r, np.zeros_like(r), m, group_size=4)
    np.testing.assert_allclose(a, w[:, None] * m, rtol=1e-5, atol=1e-6, err_msg=name)
  # RLOO = k/(k-1) x Dr.GRPO.
  np.testing.assert_allclose(want["rloo"], 4 / 3 * want["dr_grpo"], rtol=1e-5)


def test_reinforce_pp_return_to_go_and_whitening():
  r, _, m = _rows()
  a, _ = adv_lib.compute_advantages("reinforce_pp", r, np.zeros_like(r), m, gamma=0.9)
  want = np.zeros_like(r)
  for i in range(r.shape[0]):
    acc = 0.0
    for t in reversed(range(r.shape[1])):
      if m[i, t]:
        acc = r[i, t] + 0.9 * acc
        want[i, t] = acc
  np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
  aw, _ = adv_lib.compute_advantages("reinforce_pp", r, np.zeros_like(r), m, gamma=0.9,
                                     whiten_advantages=True)
  sel = want[m > 0]
  np.testing.assert_allclose(np.asarray(aw)[m > 0], (sel - sel.mean()) / np.sqrt(sel.var() + 1e-8),
                             rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(aw)[m == 0] == 0)


def test_reward_whitening_rescales_only():
  r, v, m = _rows()
  out = adv_lib.whiten(r, m, shift_mean=False)
  sel = r[m > 0]
  np.testing.assert_allclose(np.asarray(out)[m > 0],
                             (sel - sel.mean()) / np.sqrt(sel.var() + 1e-8) + sel.mean(),
                             rtol=1e-4, atol=1e-5)


def test_jit_and_errors():
  r, v, m = _rows()
  a1, _ = jax.jit(lambda *x: adv_lib.gae(*x, gamma=0.9, lam=0.9))(r, v, m)
  a2, _ = adv_lib.gae(r, v, m, gamma=0.9, lam=0.9)
  np.testing.assert_allclose(a1, a2, rtol=1e-6)
  with pytest.raises(ConfigError, match="unknown advantage estimator 'gea'"):
    adv_lib.get_spec("gea")
  with pytest.raises(ConfigError, match="groups of 4"):
    adv_lib.compute_advantages("grpo", r, v, m, group_size=4)
  with pytest.raises(ValueError, match="already registered"):
    adv_lib.register("gae")(lambda *a, **k: None)
