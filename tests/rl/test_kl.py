"""KL estimators on known distributions and the adaptive controller's response."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax.errors import ConfigError
from prefjax.rl import kl as kl_lib

P = np.array([0.5, 0.2, 0.2, 0.1])
Q = np.array([0.25, 0.25, 0.4, 0.1])
KL_PQ = float(np.sum(P * np.log(P / Q)))


def _expect(estimator):
  """E_{x ~ p}[k(x)] exactly, by weighting every outcome by p(x)."""
  k = np.asarray(kl_lib.kl_estimate(jnp.log(P), jnp.log(Q), estimator), np.float64)
  return float(np.sum(P * k))


def test_k1_and_k3_are_unbiased_k2_is_half_the_second_moment():
  assert _expect("k1") == pytest.approx(KL_PQ, rel=1e-5)
  assert _expect("k3") == pytest.approx(KL_PQ, rel=1e-5)
  assert _expect("k2") == pytest.approx(0.5 * np.sum(P * np.log(P / Q) ** 2), rel=1e-5)
  # k3 >= 0 everywhere; k1 is negative where p < q.
  k3 = np.asarray(kl_lib.kl_estimate(jnp.log(P), jnp.log(Q), "k3"))
  k1 = np.asarray(kl_lib.kl_estimate(jnp.log(P), jnp.log(Q), "k1"))
  assert (k3 >= 0).all() and (k1 < 0).any()


def test_monte_carlo_estimates_converge():
  x = jax.random.categorical(jax.random.key(0), jnp.log(P), shape=(200_000,))
  lp, lq = jnp.log(P)[x], jnp.log(Q)[x]
  for est in ("k1", "k3"):
    assert float(kl_lib.kl_estimate(lp, lq, est).mean()) == pytest.approx(KL_PQ, abs=3e-3)
  # k3 has lower variance than k1 here (q close to p).
  assert float(kl_lib.kl_estimate(lp, lq, "k3").var()) < float(kl_lib.kl_estimate(lp, lq, "k1").var())


def test_penalised_rewards_and_placement():
  r = jnp.zeros((1, 4))
  m = jnp.array([[0.0, 1.0, 1.0, 0.0]])
  lp, lr = jnp.array([[-1.0, -1.0, -2.0, -3.0]]), jnp.array([[-2.0, -1.5, -1.0, -1.0]])
  out = kl_lib.penalised_rewards(r, lp, lr, m, coef=0.5, estimator="k1")
  np.testing.assert_allclose(out, [[0.0, -0.25, 0.5, 0.0]])
  assert kl_lib.in_reward("both") and kl_lib.in_loss("both")
  assert kl_lib.in_reward("reward") and not kl_lib.in_loss("reward")
  with pytest.raises(ConfigError, match="unknown placement 'rewards'"):
    kl_lib.in_reward("rewards")
  with pytest.raises(ConfigError, match="unknown KL estimator 'k4'"):
    kl_lib.kl_estimate(lp, lr, "k4")


def test_adaptive_controller_response():
  # Proportional error clipped to +-0.2; step size n_steps / horizon.
  up = kl_lib.adaptive_kl_update(0.1, 12.0, target=6.0, horizon=1000, n_steps=100)
  assert up == pytest.approx(0.1 * (1 + 0.2 * 0.1))          # error 1.0 clipped to 0.2
  small = kl_lib.adaptive_kl_update(0.1, 6.6, target=6.0, horizon=1000, n_steps=100)
  assert small == pytest.approx(0.1 * (1 + 0.1 * 0.1))       # error 0.1, unclipped
  down = kl_lib.adaptive_kl_update(0.1, 0.0, target=6.0, horizon=1000, n_steps=100)
  assert down == pytest.approx(0.1 * (1 - 0.2 * 0.1))
  assert kl_lib.adaptive_kl_update(0.1, 6.0, target=6.0, horizon=1000, n_steps=100) == 0.1
  # Closed form over k steps at a constant KL above target: geometric growth.
  c = kl_lib.KLController(coef=0.2, adaptive=True, target=1.0, horizon=50)
  for _ in range(5):
    c.update(3.0, n_steps=10)
  assert c.coef == pytest.approx(0.2 * (1 + 0.2 * 10 / 50) ** 5)
  fixed = kl_lib.KLController(coef=0.2)
  assert fixed.update(100.0, 10) == 0.2
  with pytest.raises(ConfigError, match="target > 0"):
    kl_lib.KLController(coef=0.1, adaptive=True, target=0.0)
