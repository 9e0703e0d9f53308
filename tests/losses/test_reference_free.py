"""cpo, simpo, orpo against numpy transcriptions; they never touch the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_helpers import (SHARED_METRICS, assert_finite_loss_and_grad, extreme_pairwise,
                          np_log_sigmoid, random_pairwise, to_jax)
from prefjax import losses as L


def np_cpo(b, beta=0.1, alpha=1.0, label_smoothing=0.0):
  h = beta * (b["policy_chosen_logps"] - b["policy_rejected_logps"])
  pref = -(1 - label_smoothing) * np_log_sigmoid(h) - label_smoothing * np_log_sigmoid(-h)
  return pref + alpha * (-b["policy_chosen_logps"] / b["chosen_lengths"])


def np_simpo(b, beta=2.0, gamma=1.0, label_smoothing=0.0):
  h = beta * (b["policy_chosen_logps"] / b["chosen_lengths"]
              - b["policy_rejected_logps"] / b["rejected_lengths"]) - gamma
  return -(1 - label_smoothing) * np_log_sigmoid(h) - label_smoothing * np_log_sigmoid(-h)


def np_orpo(b, beta=0.1):
  # ORPO paper eqs. 6-7 with TRL's averaged log-probs: odds = p / (1 - p), p = exp(avg).
  pw = np.exp(b["policy_chosen_logps"] / b["chosen_lengths"])
  pl = np.exp(b["policy_rejected_logps"] / b["rejected_lengths"])
  log_odds_ratio = np.log((pw / (1 - pw)) / (pl / (1 - pl)))
  return -np.log(pw) - beta * np_log_sigmoid(log_odds_ratio)


CASES = [
    ("cpo", np_cpo, [{}, {"beta": 0.5, "alpha": 0.0}, {"beta": 1.0, "alpha": 0.3,
                                                       "label_smoothing": 0.1}]),
    ("simpo", np_simpo, [{}, {"beta": 2.5, "gamma": 1.4}, {"beta": 1.0, "gamma": 0.0,
                                                           "label_smoothing": 0.2}]),
    ("orpo", np_orpo, [{}, {"beta": 0.5}, {"beta": 2.0}]),
]


def _drop_reference(batch):
  return {**batch, "ref_chosen_logps": None, "ref_rejected_logps": None}


@pytest.mark.parametrize("name,ref_fn,hparam_list", CASES, ids=[c[0] for c in CASES])
def test_matches_numpy_reference(name, ref_fn, hparam_list):
  assert not L.get_spec(name).needs_reference
  for seed, hp in enumerate(hparam_list):
    batch = random_pairwise(seed)
    got, metrics = L.get(name)(**_drop_reference(to_jax(batch)), **hp)
    want = ref_fn({k: v.astype(np.float64) for k, v in batch.items()}, **hp)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert set(SHARED_METRICS) <= set(metrics)


@pytest.mark.parametrize("name", ["cpo", "simpo", "orpo"])
def test_ignores_reference(name):
  batch = to_jax(random_pairwise(1))
  shifted = {**batch, "ref_chosen_logps": batch["ref_chosen_logps"] + 100.0}
  np.testing.assert_array_equal(L.get(name)(**batch)[0], L.get(name)(**shifted)[0])
  np.testing.assert_array_equal(L.get(name)(**batch)[0],
                                L.get(name)(**_drop_reference(batch))[0])


@pytest.mark.parametrize("name", ["cpo", "simpo", "orpo"])
def test_finite_for_extreme_log_probs(name):
  # For reference-free losses the log-probs themselves are +-magnitude (positive ones are
  # not valid log-probs but must not produce NaN, e.g. ORPO's log(1 - p)).
  for magnitude in (1e3, 1e4):
    assert_finite_loss_and_grad(L.get(name), _drop_reference(extreme_pairwise(magnitude)))


def test_orpo_log_odds_near_probability_one():
  # Average log-probs in (-1e-7, 0], where 1 - p cancels in float32, and exactly 0.
  avg = jnp.array([0.0, -1e-8, -1e-7, -1e-3, -0.5, -30.0])
  ones = jnp.ones_like(avg)
  losses, m = L.orpo(policy_chosen_logps=avg, policy_rejected_logps=jnp.full_like(avg, -1.0),
                     chosen_lengths=ones, rejected_lengths=ones)
  assert np.all(np.isfinite(np.asarray(losses)))
  # Accurate where no clamp applies: log odds(-1e-3) = log(exp(-1e-3) / -expm1(-1e-3)).
  a = -1e-3
  want = (a - np.log(-np.expm1(a))) - (-1.0 - np.log(-np.expm1(-1.0)))
  np.testing.assert_allclose(m["orpo/log_odds_ratio"][3], want, rtol=1e-5)
  grad = jax.grad(lambda p: jnp.sum(L.orpo(policy_chosen_logps=p,
                                           policy_rejected_logps=jnp.full_like(avg, -1.0),
                                           chosen_lengths=ones, rejected_lengths=ones)[0]))(avg)
  assert np.all(np.isfinite(np.asarray(grad)))


def _hand_built():
  return to_jax({
      "policy_chosen_logps": np.array([-2.0, -12.0], np.float32),
      "policy_rejected_logps": np.array([-6.0, -4.0], np.float32),
      "ref_chosen_logps": None, "ref_rejected_logps": None,
      "chosen_lengths": np.array([2.0, 4.0], np.float32),
      "rejected_lengths": np.array([3.0, 2.0], np.float32),
  })


def test_cpo_metrics():
  losses, m = L.cpo(**_hand_built(), beta=0.5)
  np.testing.assert_allclose(m["rewards/chosen"], [-1.0, -6.0])  # beta * summed log-prob.
  np.testing.assert_allclose(m["rewards/rejected"], [-3.0, -2.0])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  np.testing.assert_allclose(m["nll/chosen"], [1.0, 3.0])
  np.testing.assert_allclose(m["logps/chosen"], [-2.0, -12.0])


def test_simpo_metrics():
  losses, m = L.simpo(**_hand_built(), beta=2.0, gamma=1.0)
  np.testing.assert_allclose(m["rewards/chosen"], [-2.0, -6.0])  # beta * mean log-prob.
  np.testing.assert_allclose(m["rewards/rejected"], [-4.0, -4.0])
  np.testing.assert_allclose(m["rewards/margins"], [2.0, -2.0])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  np.testing.assert_allclose(losses, -np_log_sigmoid(np.array([1.0, -3.0])), rtol=1e-6)


def test_orpo_metrics():
  batch = _hand_built()
  losses, m = L.orpo(**batch, beta=0.5)
  np.testing.assert_allclose(m["rewards/chosen"], [-0.5, -1.5])  # beta * mean log-prob.
  np.testing.assert_allclose(m["rewards/rejected"], [-1.0, -1.0])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  np.testing.assert_allclose(m["nll/chosen"], [1.0, 3.0])
  assert m["orpo/log_odds_ratio"][0] > 0 > m["orpo/log_odds_ratio"][1]
  # Equal average log-probs: odds ratio 1, loss = NLL + beta log 2.
  same = {**batch, "policy_rejected_logps": batch["policy_chosen_logps"],
          "rejected_lengths": batch["chosen_lengths"]}
  losses, m0 = L.orpo(**same, beta=0.5)
  np.testing.assert_allclose(losses, [1.0 + 0.5 * np.log(2), 3.0 + 0.5 * np.log(2)], rtol=1e-6)
  np.testing.assert_array_equal(m0["rewards/accuracies"], 0.0)
