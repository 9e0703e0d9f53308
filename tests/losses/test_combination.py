"""combine / make_combined_spec: weighted sums of registered pairwise losses."""
import jax
import numpy as np
import pytest

from loss_helpers import random_pairwise, to_jax
from prefjax import losses as L


def test_weighted_sum_of_parts_with_their_hyper_parameters():
  batch = to_jax(random_pairwise(0))
  weights = {"dpo": 1.0, "sppo_hard": 0.25, "simpo": 0.5}
  hparams = {"dpo": {"beta": 0.3}, "simpo": {"beta": 2.5, "gamma": 0.7}}
  losses, metrics = L.combine(weights, hparams)(**batch)
  want = (L.dpo(**batch, beta=0.3)[0] + 0.25 * L.sppo_hard(**batch)[0]
          + 0.5 * L.simpo(**batch, beta=2.5, gamma=0.7)[0])
  np.testing.assert_allclose(losses, want, rtol=1e-6)
  # Prefixed metrics of every part, plus the first part's shared ones unprefixed.
  _, dpo_metrics = L.dpo(**batch, beta=0.3)
  _, simpo_metrics = L.simpo(**batch, beta=2.5, gamma=0.7)
  for key, value in dpo_metrics.items():
    np.testing.assert_array_equal(metrics[f"dpo/{key}"], value)
    np.testing.assert_array_equal(metrics[key], value)
  np.testing.assert_array_equal(metrics["simpo/rewards/margins"],
                                simpo_metrics["rewards/margins"])
  np.testing.assert_allclose(metrics["sppo_hard/loss"], L.sppo_hard(**batch)[0])
  # Under jit too.
  jitted = jax.jit(lambda b: L.combine(weights, hparams)(**b)[0])(batch)
  np.testing.assert_allclose(jitted, want, rtol=1e-5)


def test_needs_reference_is_the_or_of_parts():
  assert not L.make_combined_spec({"cpo": 1.0, "simpo": 0.5}).needs_reference
  assert L.make_combined_spec({"cpo": 1.0, "dpo": 0.5}).needs_reference
  assert L.make_combined_spec({"ipo": 1.0}).needs_reference
  spec = L.make_combined_spec({"dpo": 1.0, "hinge": 0.5}, {"hinge": {"beta": 0.2}})
  assert spec.kind == "pairwise" and spec.name == "dpo*1.0+hinge*0.5"


def test_reference_free_combination_runs_without_reference():
  batch = to_jax(random_pairwise(1))
  batch["ref_chosen_logps"] = batch["ref_rejected_logps"] = None
  spec = L.make_combined_spec({"cpo": 1.0, "orpo": 2.0})
  losses, _ = spec.fn(**batch)
  np.testing.assert_allclose(losses, L.cpo(**batch)[0] + 2.0 * L.orpo(**batch)[0], rtol=1e-6)


def test_invalid_combinations_raise():
  with pytest.raises(ValueError, match="at least one"):
    L.combine({})
  with pytest.raises(KeyError, match="no_such_loss"):
    L.combine({"no_such_loss": 1.0})
  with pytest.raises(ValueError, match="pairwise"):
    L.combine({"dpo": 1.0, "kto": 1.0})
  with pytest.raises(ValueError, match="not in the combination"):
    L.combine({"dpo": 1.0}, {"ipo": {"beta": 0.1}})
  with pytest.raises(ValueError, match="no hyper-parameter"):
    L.combine({"dpo": 1.0}, {"dpo": {"gamma": 0.5}})
  with pytest.raises(ValueError, match="no hyper-parameter"):
    L.combine({"dpo": 1.0}, {"dpo": {"policy_chosen_logps": 0.5}})
  with pytest.raises(ValueError, match="finite"):
    L.combine({"dpo": float("nan")})
