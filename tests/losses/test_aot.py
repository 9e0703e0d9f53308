"""aot (paired) and aot_unpaired against numpy transcriptions of TRL's sort-based losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_helpers import (assert_finite_loss_and_grad, extreme_pairwise, np_log_sigmoid,
                          random_pairwise, to_jax)
from prefjax import losses as L


def np_aot(b, beta=0.1, label_smoothing=0.0):
  logratios = np.sort(b["policy_chosen_logps"] - b["policy_rejected_logps"])
  ref_logratios = np.sort(b["ref_chosen_logps"] - b["ref_rejected_logps"])
  delta = beta * (logratios - ref_logratios)
  return -(1 - label_smoothing) * np_log_sigmoid(delta) - label_smoothing * np_log_sigmoid(
      -delta)


def np_aot_unpaired(b, beta=0.1, label_smoothing=0.0):
  chosen = np.sort(b["policy_chosen_logps"] - b["ref_chosen_logps"])
  rejected = np.sort(b["policy_rejected_logps"] - b["ref_rejected_logps"])
  delta = beta * (chosen - rejected)
  return -(1 - label_smoothing) * np_log_sigmoid(delta) - label_smoothing * np_log_sigmoid(
      -delta)


HPARAMS = [{}, {"beta": 0.5}, {"beta": 1.0, "label_smoothing": 0.2}]


@pytest.mark.parametrize("name,ref_fn", [("aot", np_aot), ("aot_unpaired", np_aot_unpaired)])
def test_matches_numpy_reference(name, ref_fn):
  for seed, hp in enumerate(HPARAMS):
    batch = random_pairwise(seed)
    got, _ = L.get(name)(**to_jax(batch), **hp)
    want = ref_fn({k: v.astype(np.float64) for k, v in batch.items()}, **hp)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_finite_for_extreme_log_ratios(name):
  for magnitude in (1e3, 1e4):
    assert_finite_loss_and_grad(L.get(name), extreme_pairwise(magnitude), beta=1.0)


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_batch_of_one_is_dpo(name):
  batch = to_jax(random_pairwise(5, b=1))
  np.testing.assert_allclose(L.get(name)(**batch)[0], L.dpo(**batch)[0], rtol=1e-6)


def test_is_invariant_to_batch_order_and_sorts():
  batch = to_jax(random_pairwise(6))
  perm = np.random.default_rng(0).permutation(16)
  shuffled = {k: v[perm] for k, v in batch.items()}
  for fn in (L.aot, L.aot_unpaired):
    np.testing.assert_allclose(fn(**shuffled)[0], fn(**batch)[0], rtol=1e-6)
    m = fn(**batch)[1]["aot/sorted_margins"]
    assert m.shape == (16,)


def test_gradient_goes_to_the_example_in_each_quantile():
  # aot_unpaired: chosen log-ratios [3, -1] sort to [-1, 3]; rejected [0, 0]. Only the
  # quantile losses depend on the examples: d loss / d chosen_i = -beta sigmoid(-beta delta).
  z = jnp.zeros(2)

  def total(pc):
    return jnp.sum(L.aot_unpaired(policy_chosen_logps=pc, policy_rejected_logps=z,
                                  ref_chosen_logps=z, ref_rejected_logps=z, beta=1.0)[0])

  grad = jax.grad(total)(jnp.array([3.0, -1.0]))
  np.testing.assert_allclose(grad, [-1 / (1 + np.exp(3.0)), -1 / (1 + np.exp(-1.0))],
                             rtol=1e-6)


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_metrics(name):
  batch = to_jax({
      "policy_chosen_logps": np.array([-3.0, -6.0], np.float32),
      "policy_rejected_logps": np.array([-8.0, -2.0], np.float32),
      "ref_chosen_logps": np.array([-5.0, -5.0], np.float32),
      "ref_rejected_logps": np.array([-7.0, -4.0], np.float32),
  })
  losses, m = L.get(name)(**batch, beta=0.5)
  # Per example (not sorted): margins beta * (2 - (-1)) and beta * (-1 - 2).
  np.testing.assert_allclose(m["rewards/margins"], [1.5, -1.5])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  # Quantile by quantile: u sorted [-4, 5] vs v sorted [-1, 2] (aot); r_w sorted [-1, 2] vs
  # r_l sorted [-1, 2] (aot_unpaired).
  want = [-1.5, 1.5] if name == "aot" else [0.0, 0.0]
  np.testing.assert_allclose(m["aot/sorted_margins"], want)
  same = {**batch, "policy_chosen_logps": batch["ref_chosen_logps"],
          "policy_rejected_logps": batch["ref_rejected_logps"]}
  losses, m0 = L.get(name)(**same)
  np.testing.assert_allclose(losses, np.log(2.0), rtol=1e-6)
  np.testing.assert_array_equal(m0["rewards/margins"], 0.0)
  np.testing.assert_array_equal(m0["aot/sorted_margins"], 0.0)
