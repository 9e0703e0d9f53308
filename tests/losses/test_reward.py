"""Bradley-Terry reward loss against a numpy transcription (margin, centering, metrics)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax import losses


def _np_bt(rw, rl, margins, margin, c):
  d = rw - rl - margin - (0 if margins is None else margins)
  return np.log1p(np.exp(-d)) + c * (rw + rl) ** 2


@pytest.mark.parametrize("margin,center,per_pair", [(0.0, 0.0, False), (0.5, 0.0, False),
                                                    (0.0, 0.1, True), (0.3, 0.05, True)])
def test_matches_numpy(margin, center, per_pair):
  rng = np.random.default_rng(0)
  rw, rl = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
  m = rng.uniform(0, 1, 8).astype(np.float32) if per_pair else None
  got, metrics = losses.get("bradley_terry")(
      chosen_rewards=jnp.asarray(rw), rejected_rewards=jnp.asarray(rl),
      margins=None if m is None else jnp.asarray(m), margin=margin, center_coef=center)
  np.testing.assert_allclose(got, _np_bt(rw, rl, m, margin, center), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(metrics["rewards/accuracies"], (rw > rl).astype(np.float32))
  np.testing.assert_allclose(metrics["rewards/margins"], rw - rl, rtol=1e-6)
  np.testing.assert_allclose(metrics["rewards/chosen_std"], np.std(rw), rtol=1e-5)


def test_extremes_tie_and_grad():
  fn = losses.get("bradley_terry")
  big = jnp.array([1e4, -1e4, 0.0])
  out, m = fn(chosen_rewards=big, rejected_rewards=-big)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out, [0.0, 2e4, np.log(2)], rtol=1e-5)
  assert float(m["rewards/accuracies"][2]) == 0.0          # a tie is wrong
  g = jax.grad(lambda r: fn(chosen_rewards=r, rejected_rewards=jnp.zeros(3),
                            center_coef=0.1)[0].sum())(jnp.array([0.0, 1.0, -1.0]))
  # d/dr [-log sigmoid(r) + 0.1 r^2] = -sigmoid(-r) + 0.2 r
  r = np.array([0.0, 1.0, -1.0])
  np.testing.assert_allclose(g, -1 / (1 + np.exp(r)) + 0.2 * r, rtol=1e-5)


def test_registered_as_reward_kind():
  spec = losses.get_spec("bradley_terry")
  assert spec.kind == "reward" and not spec.needs_reference
