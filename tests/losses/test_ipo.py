"""ipo, sppo_hard, hinge against numpy transcriptions."""
import numpy as np
import pytest

from loss_helpers import (SHARED_METRICS, assert_finite_loss_and_grad, extreme_pairwise,
                          random_pairwise, to_jax)
from prefjax import losses as L


def np_ipo(b, beta=0.1, average_log_ratios=True):
  rw = b["policy_chosen_logps"] - b["ref_chosen_logps"]
  rl = b["policy_rejected_logps"] - b["ref_rejected_logps"]
  if average_log_ratios:
    rw, rl = rw / b["chosen_lengths"], rl / b["rejected_lengths"]
  return (rw - rl - 1 / (2 * beta)) ** 2


def np_sppo_hard(b, beta=0.1):
  a = b["policy_chosen_logps"] - b["ref_chosen_logps"]
  c = b["policy_rejected_logps"] - b["ref_rejected_logps"]
  return (a - 0.5 / beta) ** 2 + (c + 0.5 / beta) ** 2


def np_hinge(b, beta=0.1):
  h = beta * ((b["policy_chosen_logps"] - b["ref_chosen_logps"])
              - (b["policy_rejected_logps"] - b["ref_rejected_logps"]))
  return np.maximum(0.0, 1.0 - h)


CASES = [
    ("ipo", np_ipo, [{}, {"beta": 0.5}, {"beta": 0.1, "average_log_ratios": False},
                     {"beta": 1.0, "average_log_ratios": False}]),
    ("sppo_hard", np_sppo_hard, [{}, {"beta": 0.5}, {"beta": 2.0}]),
    ("hinge", np_hinge, [{}, {"beta": 0.5}, {"beta": 2.0}]),
]


@pytest.mark.parametrize("name,ref_fn,hparam_list", CASES, ids=[c[0] for c in CASES])
def test_matches_numpy_reference(name, ref_fn, hparam_list):
  for seed, hp in enumerate(hparam_list):
    batch = random_pairwise(seed)
    got, metrics = L.get(name)(**to_jax(batch), **hp)
    want = ref_fn({k: v.astype(np.float64) for k, v in batch.items()}, **hp)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert set(SHARED_METRICS) <= set(metrics)


@pytest.mark.parametrize("name,hp", [
    ("ipo", {}), ("ipo", {"average_log_ratios": False}), ("sppo_hard", {}), ("hinge", {}),
])
def test_finite_for_extreme_log_ratios(name, hp):
  for magnitude in (1e3, 1e4):
    assert_finite_loss_and_grad(L.get(name), extreme_pairwise(magnitude), **hp)


def test_ipo_needs_lengths_when_averaging():
  batch = to_jax(random_pairwise(0, b=2))
  batch["chosen_lengths"] = None
  with pytest.raises(ValueError, match="lengths"):
    L.ipo(**batch)
  L.ipo(**batch, average_log_ratios=False)  # Summed log-ratios need no lengths.


def _hand_built():
  return to_jax({
      "policy_chosen_logps": np.array([-3.0, -6.0], np.float32),
      "policy_rejected_logps": np.array([-8.0, -2.0], np.float32),
      "ref_chosen_logps": np.array([-5.0, -5.0], np.float32),
      "ref_rejected_logps": np.array([-7.0, -4.0], np.float32),
      "chosen_lengths": np.array([2.0, 4.0], np.float32),
      "rejected_lengths": np.array([4.0, 2.0], np.float32),
  })


@pytest.mark.parametrize("name,hp,at_equal", [
    ("ipo", {"average_log_ratios": False}, 1.0),   # (0 - 1/(2*0.5))^2
    ("sppo_hard", {}, 2.0),                         # 2 * (1/(2*0.5))^2
    ("hinge", {}, 1.0),
])
def test_metrics_and_value_at_reference(name, hp, at_equal):
  batch = _hand_built()
  _, m = L.get(name)(**batch, beta=0.5, **hp)
  np.testing.assert_allclose(m["rewards/chosen"], [1.0, -0.5])
  np.testing.assert_allclose(m["rewards/margins"], [1.5, -1.5])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  same = {**batch, "policy_chosen_logps": batch["ref_chosen_logps"],
          "policy_rejected_logps": batch["ref_rejected_logps"]}
  losses, m0 = L.get(name)(**same, beta=0.5, **hp)
  np.testing.assert_allclose(losses, at_equal, rtol=1e-6)
  np.testing.assert_array_equal(m0["rewards/margins"], 0.0)


def test_ipo_averaged_rewards_are_per_token():
  _, m = L.ipo(**_hand_built(), beta=1.0)
  np.testing.assert_allclose(m["rewards/chosen"], [1.0, -0.25])
  np.testing.assert_allclose(m["rewards/rejected"], [-0.25, 1.0])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])


def test_ipo_and_hinge_reach_zero_at_their_targets():
  z = np.zeros(1, np.float32)
  b = to_jax({"policy_chosen_logps": z + 1.0, "policy_rejected_logps": z,
              "ref_chosen_logps": z, "ref_rejected_logps": z})
  np.testing.assert_allclose(L.ipo(**b, beta=0.5, average_log_ratios=False)[0], 0.0)
  np.testing.assert_allclose(L.hinge(**b, beta=1.0)[0], 0.0)
  np.testing.assert_allclose(L.hinge(**b, beta=0.5)[0], 0.5)
