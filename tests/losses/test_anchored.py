"""nca_pair, bco_pair, apo_zero, apo_down against numpy transcriptions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_helpers import (SHARED_METRICS, assert_finite_loss_and_grad, extreme_pairwise,
                          np_log_sigmoid, np_sigmoid, random_pairwise, to_jax)
from prefjax import losses as L


def _rewards(b, beta):
  return (beta * (b["policy_chosen_logps"] - b["ref_chosen_logps"]),
          beta * (b["policy_rejected_logps"] - b["ref_rejected_logps"]))


def np_nca_pair(b, beta=0.1):
  rw, rl = _rewards(b, beta)
  return -np_log_sigmoid(rw) - 0.5 * np_log_sigmoid(-rw) - 0.5 * np_log_sigmoid(-rl)


def np_bco_pair(b, beta=0.1, delta=0.0):
  rw, rl = _rewards(b, beta)
  return -np_log_sigmoid(rw - delta) - np_log_sigmoid(-(rl - delta))


def np_apo_zero(b, beta=0.1):
  rw, rl = _rewards(b, beta)
  return (1 - np_sigmoid(rw)) + np_sigmoid(rl)


def np_apo_down(b, beta=0.1):
  rw, rl = _rewards(b, beta)
  return np_sigmoid(rw) + (1 - np_sigmoid(rw - rl))


CASES = [
    ("nca_pair", np_nca_pair, [{}, {"beta": 0.5}, {"beta": 2.0}]),
    ("bco_pair", np_bco_pair, [{}, {"beta": 0.5, "delta": 0.3}, {"beta": 1.0, "delta": -1.2}]),
    ("apo_zero", np_apo_zero, [{}, {"beta": 0.5}, {"beta": 2.0}]),
    ("apo_down", np_apo_down, [{}, {"beta": 0.5}, {"beta": 2.0}]),
]


@pytest.mark.parametrize("name,ref_fn,hparam_list", CASES, ids=[c[0] for c in CASES])
def test_matches_numpy_reference(name, ref_fn, hparam_list):
  for seed, hp in enumerate(hparam_list):
    batch = random_pairwise(seed)
    got, metrics = L.get(name)(**to_jax(batch), **hp)
    want = ref_fn({k: v.astype(np.float64) for k, v in batch.items()}, **hp)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert set(SHARED_METRICS) <= set(metrics)


@pytest.mark.parametrize("name", ["nca_pair", "bco_pair", "apo_zero", "apo_down"])
def test_finite_for_extreme_log_ratios(name):
  for magnitude in (1e3, 1e4):
    for beta in (0.1, 1.0):
      assert_finite_loss_and_grad(L.get(name), extreme_pairwise(magnitude), beta=beta)


@pytest.mark.parametrize("name,at_equal", [
    ("nca_pair", 2 * np.log(2.0)), ("bco_pair", 2 * np.log(2.0)), ("apo_zero", 1.0),
    ("apo_down", 1.0),
])
def test_metrics_and_value_at_reference(name, at_equal):
  batch = to_jax({
      "policy_chosen_logps": np.array([-3.0, -6.0], np.float32),
      "policy_rejected_logps": np.array([-8.0, -2.0], np.float32),
      "ref_chosen_logps": np.array([-5.0, -5.0], np.float32),
      "ref_rejected_logps": np.array([-7.0, -4.0], np.float32),
  })
  _, m = L.get(name)(**batch, beta=0.5)
  np.testing.assert_allclose(m["rewards/chosen"], [1.0, -0.5])
  np.testing.assert_allclose(m["rewards/rejected"], [-0.5, 1.0])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  same = {**batch, "policy_chosen_logps": batch["ref_chosen_logps"],
          "policy_rejected_logps": batch["ref_rejected_logps"]}
  losses, m0 = L.get(name)(**same)
  np.testing.assert_allclose(losses, at_equal, rtol=1e-6)
  np.testing.assert_array_equal(m0["rewards/margins"], 0.0)


def test_bco_rewards_mean_and_detached_delta():
  batch = to_jax(random_pairwise(2))
  _, m = L.bco_pair(**batch, beta=0.5)
  rw, rl = _rewards({k: np.asarray(v, np.float64) for k, v in batch.items()}, 0.5)
  np.testing.assert_allclose(m["bco/rewards_mean"], (rw + rl) / 2, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda d: jnp.sum(L.bco_pair(**batch, delta=d)[0]))(0.3)
  assert grad == 0.0


def test_anchored_losses_move_chosen_likelihood_as_designed():
  # At policy == reference, NCA, BCO and APO-zero raise the chosen log-prob (negative
  # gradient) and all four lower the rejected one; APO-down's two chosen terms cancel there
  # (gradient 0), and once the margin is positive it lowers the chosen log-prob too.
  z = jnp.zeros(1)

  def grads(fn, pc, pr):
    return jax.grad(
        lambda pc, pr: jnp.sum(fn(policy_chosen_logps=pc, policy_rejected_logps=pr,
                                  ref_chosen_logps=z, ref_rejected_logps=z, beta=1.0)[0]),
        argnums=(0, 1))(pc, pr)

  for name, sign_chosen in [("nca_pair", -1), ("bco_pair", -1), ("apo_zero", -1),
                            ("apo_down", 0)]:
    g_c, g_r = grads(L.get(name), z, z)
    assert np.sign(g_c[0]) == sign_chosen, name
    assert np.sign(g_r[0]) == 1, name
  g_c, _ = grads(L.apo_down, z, z - 5.0)
  assert g_c[0] > 0
