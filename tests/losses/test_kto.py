"""kto against a numpy transcription; z0 is detached and clamped at 0."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_helpers import np_sigmoid
from prefjax import losses as L


def random_unpaired(seed=0, b=16, kl_shift=0.5):
  rng = np.random.default_rng(seed)
  ref = rng.uniform(-12.0, -1.0, b)
  ref_kl = rng.uniform(-12.0, -1.0, b)
  batch = {
      "policy_logps": ref + rng.normal(0.0, 2.0, b),
      "ref_logps": ref,
      "labels": (rng.uniform(size=b) < 0.5).astype(float),
      "policy_kl_logps": ref_kl + rng.normal(kl_shift, 1.0, b),
      "ref_kl_logps": ref_kl,
      "lengths": rng.integers(1, 21, b).astype(float),
  }
  return {k: v.astype(np.float32) for k, v in batch.items()}


def np_kto(b, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
  z0 = max(0.0, np.mean(b["policy_kl_logps"] - b["ref_kl_logps"]))
  r = b["policy_logps"] - b["ref_logps"]
  return np.where(b["labels"] == 1,
                  desirable_weight * (1 - np_sigmoid(beta * (r - z0))),
                  undesirable_weight * (1 - np_sigmoid(beta * (z0 - r))))


def _jax(batch):
  return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("kl_shift", [0.5, -0.5])  # z0 > 0 and clamped z0 = 0.
def test_matches_numpy_reference(kl_shift):
  for seed, hp in enumerate([{}, {"beta": 0.5, "desirable_weight": 1.33},
                             {"beta": 2.0, "undesirable_weight": 0.7}]):
    batch = random_unpaired(seed, kl_shift=kl_shift)
    got, _ = L.kto(**_jax(batch), **hp)
    want = np_kto({k: v.astype(np.float64) for k, v in batch.items()}, **hp)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_reference_point_is_detached_and_clamped():
  batch = _jax(random_unpaired(1, kl_shift=2.0))
  grad = jax.grad(lambda kl: jnp.sum(L.kto(**{**batch, "policy_kl_logps": kl})[0]))(
      batch["policy_kl_logps"])
  np.testing.assert_array_equal(grad, 0.0)
  _, m = L.kto(**batch)
  np.testing.assert_allclose(m["kl"], np.mean(batch["policy_kl_logps"] - batch["ref_kl_logps"]),
                             rtol=1e-5)
  # A negative mean KL estimate is clamped: same loss as with a zero estimate.
  below = {**batch, "policy_kl_logps": batch["ref_kl_logps"] - 3.0}
  zero = {**batch, "policy_kl_logps": batch["ref_kl_logps"]}
  assert float(L.kto(**below)[1]["kl"]) == 0.0
  np.testing.assert_array_equal(L.kto(**below)[0], L.kto(**zero)[0])


def test_finite_for_extreme_log_ratios():
  for s in (1e3, 1e4):
    ratios = jnp.array([s, -s, s, -s])
    ref = jnp.full(4, -5.0)
    batch = {"policy_logps": ref + ratios, "ref_logps": ref,
             "labels": jnp.array([1.0, 1.0, 0.0, 0.0]),
             "policy_kl_logps": ref + jnp.array([s, s, -s, s]), "ref_kl_logps": ref}
    losses, _ = L.kto(**batch)
    grad = jax.grad(lambda p: jnp.sum(L.kto(**{**batch, "policy_logps": p})[0]))(
        batch["policy_logps"])
    assert np.all(np.isfinite(np.asarray(losses))) and np.all(np.isfinite(np.asarray(grad)))


def test_metrics():
  z = jnp.full(4, -5.0)
  batch = {"policy_logps": z + jnp.array([2.0, -1.0, -3.0, 4.0]), "ref_logps": z,
           "labels": jnp.array([1.0, 1.0, 0.0, 0.0]), "policy_kl_logps": z + 1.0,
           "ref_kl_logps": z}
  losses, m = L.kto(**batch, beta=0.5)
  np.testing.assert_allclose(m["kl"], 1.0)
  # Desirable: r = 2 > z0 (right side), -1 < z0 (wrong); undesirable: -3 < z0, 4 > z0.
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0, 1.0, 0.0])
  np.testing.assert_allclose(m["rewards/desirable"], 0.5 * (2.0 - 1.0) / 2)
  np.testing.assert_allclose(m["rewards/undesirable"], 0.5 * (-3.0 + 4.0) / 2)
  np.testing.assert_allclose(m["logps/policy"], batch["policy_logps"])
  # At policy == reference with z0 = 0 every loss is w * sigmoid(0).
  same = {**batch, "policy_logps": z, "policy_kl_logps": z}
  losses, m0 = L.kto(**same, desirable_weight=2.0, undesirable_weight=0.5)
  np.testing.assert_allclose(losses, [1.0, 1.0, 0.25, 0.25])
  # A batch with only desirable examples reports 0 (not NaN) for the undesirable mean.
  _, m1 = L.kto(**{**batch, "labels": jnp.ones(4)})
  assert float(m1["rewards/undesirable"]) == 0.0
