"""rdpo, dpo_gamma, sigmoid_norm, exo_pair, discopop against numpy transcriptions."""
import jax.numpy as jnp
import numpy as np
import pytest

from loss_helpers import (SHARED_METRICS, assert_finite_loss_and_grad, extreme_pairwise,
                          np_log_sigmoid, np_sigmoid, random_pairwise, to_jax)
from prefjax import losses as L


def _np(batch):
  return {k: v.astype(np.float64) for k, v in batch.items()}


def _np_dpo_logits(b, beta):
  return beta * ((b["policy_chosen_logps"] - b["ref_chosen_logps"])
                 - (b["policy_rejected_logps"] - b["ref_rejected_logps"]))


# Transcribed from the papers / TRL's dpo_loss, in float64.
def np_rdpo(b, beta=0.1, label_smoothing=0.0):
  h = _np_dpo_logits(b, beta)
  e = label_smoothing
  return (-(1 - e) * np_log_sigmoid(h) + e * np_log_sigmoid(-h)) / (1 - 2 * e)


def np_dpo_gamma(b, beta=0.1, gamma=1.0):
  h = beta * ((b["policy_chosen_logps"] - gamma * b["ref_chosen_logps"])
              - (b["policy_rejected_logps"] - gamma * b["ref_rejected_logps"]))
  return -np_log_sigmoid(h)


def np_sigmoid_norm(b, beta=0.1):
  h = beta * ((b["policy_chosen_logps"] - b["ref_chosen_logps"]) / b["chosen_lengths"]
              - (b["policy_rejected_logps"] - b["ref_rejected_logps"]) / b["rejected_lengths"])
  return -np_log_sigmoid(h)


def np_exo_pair(b, beta=0.1, label_smoothing=1e-3):
  h = _np_dpo_logits(b, beta)
  e = label_smoothing
  p = np_sigmoid(h)
  return p * (np.log(p) - np.log(1 - e)) + (1 - p) * (np.log(1 - p) - np.log(e))


def np_discopop(b, beta=0.1, tau=0.05):
  h = _np_dpo_logits(b, beta)
  m = np_sigmoid(h / tau)
  return -np_log_sigmoid(h) * (1 - m) + np.exp(-h) * m


CASES = [
    ("rdpo", np_rdpo, [{}, {"beta": 0.5, "label_smoothing": 0.1},
                       {"beta": 0.05, "label_smoothing": 0.3}]),
    ("dpo_gamma", np_dpo_gamma, [{}, {"gamma": 0.5}, {"beta": 0.3, "gamma": 0.0},
                                 {"gamma": 1.5}]),
    ("sigmoid_norm", np_sigmoid_norm, [{}, {"beta": 1.0}, {"beta": 3.0}]),
    ("exo_pair", np_exo_pair, [{}, {"beta": 0.5, "label_smoothing": 0.2},
                               {"beta": 1.0, "label_smoothing": 0.5}]),
    ("discopop", np_discopop, [{}, {"beta": 0.5, "tau": 0.5}, {"beta": 1.0, "tau": 0.05}]),
]


@pytest.mark.parametrize("name,ref_fn,hparam_list", CASES, ids=[c[0] for c in CASES])
def test_matches_numpy_reference(name, ref_fn, hparam_list):
  fn = L.get(name)
  for seed, hp in enumerate(hparam_list):
    batch = random_pairwise(seed)
    got, metrics = fn(**to_jax(batch), **hp)
    np.testing.assert_allclose(got, ref_fn(_np(batch), **hp), rtol=1e-5, atol=1e-6)
    assert got.shape == (16,)
    for key in SHARED_METRICS:
      assert metrics[key].shape == (16,), key


@pytest.mark.parametrize("name,hp", [
    ("rdpo", {}), ("rdpo", {"label_smoothing": 0.4}), ("dpo_gamma", {"gamma": 0.5}),
    ("sigmoid_norm", {"beta": 1.0}), ("exo_pair", {}), ("exo_pair", {"beta": 1.0}),
    ("discopop", {}), ("discopop", {"beta": 1.0, "tau": 0.05}),
])
@pytest.mark.parametrize("magnitude", [1e3, 1e4])
def test_finite_for_extreme_log_ratios(name, hp, magnitude):
  assert_finite_loss_and_grad(L.get(name), extreme_pairwise(magnitude), **hp)


def test_rdpo_is_dpo_at_zero_noise_and_debiases_flips():
  batch = to_jax(random_pairwise(3))
  np.testing.assert_allclose(L.rdpo(**batch)[0], L.dpo(**batch)[0], rtol=1e-6)
  # E over a flip with prob eps of the rDPO loss equals the clean DPO loss.
  eps = 0.2
  flipped = {**batch, "policy_chosen_logps": batch["policy_rejected_logps"],
             "policy_rejected_logps": batch["policy_chosen_logps"],
             "ref_chosen_logps": batch["ref_rejected_logps"],
             "ref_rejected_logps": batch["ref_chosen_logps"]}
  expected = ((1 - eps) * L.rdpo(**batch, label_smoothing=eps)[0]
              + eps * L.rdpo(**flipped, label_smoothing=eps)[0])
  np.testing.assert_allclose(expected, L.dpo(**batch)[0], rtol=1e-5, atol=1e-6)


def test_invalid_hyper_parameters_raise():
  batch = to_jax(random_pairwise(0, b=2))
  with pytest.raises(ValueError, match="label_smoothing"):
    L.rdpo(**batch, label_smoothing=0.5)
  with pytest.raises(ValueError, match="label_smoothing"):
    L.exo_pair(**batch, label_smoothing=0.0)
  with pytest.raises(ValueError, match="tau"):
    L.discopop(**batch, tau=0.0)


def test_dpo_gamma_one_is_dpo():
  batch = to_jax(random_pairwise(4))
  np.testing.assert_allclose(L.dpo_gamma(**batch, gamma=1.0)[0], L.dpo(**batch)[0],
                             rtol=1e-6)


def _hand_built():
  # Pair 0: chosen log-ratio +2, rejected -1 (margin > 0); pair 1: the reverse.
  return to_jax({
      "policy_chosen_logps": np.array([-3.0, -6.0], np.float32),
      "policy_rejected_logps": np.array([-8.0, -2.0], np.float32),
      "ref_chosen_logps": np.array([-5.0, -5.0], np.float32),
      "ref_rejected_logps": np.array([-7.0, -4.0], np.float32),
      "chosen_lengths": np.array([2.0, 4.0], np.float32),
      "rejected_lengths": np.array([4.0, 2.0], np.float32),
  })


@pytest.mark.parametrize("name,at_equal", [
    ("rdpo", np.log(2.0)), ("exo_pair", None), ("discopop", (np.log(2.0) + 1.0) / 2.0),
])
def test_metrics_are_dpo_rewards(name, at_equal):
  batch = _hand_built()
  _, m = L.get(name)(**batch, beta=0.5)
  np.testing.assert_allclose(m["rewards/chosen"], [1.0, -0.5])
  np.testing.assert_allclose(m["rewards/rejected"], [-0.5, 1.0])
  np.testing.assert_allclose(m["rewards/margins"], [1.5, -1.5])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  np.testing.assert_allclose(m["logps/chosen"], [-3.0, -6.0])
  # At policy == reference every reward is 0 and the loss takes its h = 0 value.
  same = {**batch, "policy_chosen_logps": batch["ref_chosen_logps"],
          "policy_rejected_logps": batch["ref_rejected_logps"]}
  losses, m0 = L.get(name)(**same)
  np.testing.assert_array_equal(m0["rewards/margins"], 0.0)
  np.testing.assert_array_equal(m0["rewards/accuracies"], 0.0)
  if at_equal is not None:
    np.testing.assert_allclose(losses, at_equal, rtol=1e-6)


def test_exo_minimum_is_at_smoothed_label():
  # KL(Bern(p) || Bern(1 - eps)) is 0 exactly when sigmoid(h) = 1 - eps.
  eps = 0.2
  h = np.log((1 - eps) / eps)
  z = jnp.zeros(1)
  loss, _ = L.exo_pair(policy_chosen_logps=z + h, policy_rejected_logps=z,
                       ref_chosen_logps=z, ref_rejected_logps=z, beta=1.0,
                       label_smoothing=eps)
  np.testing.assert_allclose(loss, 0.0, atol=1e-6)


def test_dpo_gamma_and_sigmoid_norm_metrics_use_their_rewards():
  batch = _hand_built()
  _, m = L.dpo_gamma(**batch, beta=0.5, gamma=0.0)  # reward = beta * log pi.
  np.testing.assert_allclose(m["rewards/chosen"], [-1.5, -3.0])
  np.testing.assert_allclose(m["rewards/rejected"], [-4.0, -1.0])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  _, m = L.sigmoid_norm(**batch, beta=1.0)  # reward = log-ratio / length.
  np.testing.assert_allclose(m["rewards/chosen"], [1.0, -0.25])
  np.testing.assert_allclose(m["rewards/rejected"], [-0.25, 1.0])
  np.testing.assert_allclose(m["rewards/margins"], [1.25, -1.25])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  same = {**batch, "policy_chosen_logps": batch["ref_chosen_logps"],
          "policy_rejected_logps": batch["ref_rejected_logps"]}
  for fn in (L.dpo_gamma, L.sigmoid_norm):
    losses, m0 = fn(**same)
    np.testing.assert_allclose(losses, np.log(2.0), rtol=1e-6)
    np.testing.assert_array_equal(m0["rewards/margins"], 0.0)
