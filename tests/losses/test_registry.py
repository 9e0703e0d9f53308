"""Every registered loss resolves by name, runs under jit, and follows the conventions."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_helpers import SHARED_METRICS, random_pairwise, to_jax
from prefjax import losses as L
from prefjax.losses import registry

EXPECTED = {
    # name: (kind, needs_reference)
    "sft": ("sft", False), "dpo": ("pairwise", True), "rdpo": ("pairwise", True),
    "dpo_gamma": ("pairwise", True), "sigmoid_norm": ("pairwise", True),
    "exo_pair": ("pairwise", True), "discopop": ("pairwise", True), "aot": ("pairwise", True),
    "aot_unpaired": ("pairwise", True), "ipo": ("pairwise", True),
    "sppo_hard": ("pairwise", True), "hinge": ("pairwise", True),
    "nca_pair": ("pairwise", True), "bco_pair": ("pairwise", True),
    "apo_zero": ("pairwise", True), "apo_down": ("pairwise", True),
    "cpo": ("pairwise", False), "simpo": ("pairwise", False), "orpo": ("pairwise", False),
    "kto": ("unpaired", True), "mdpo": ("multi", True), "mipo": ("multi", True),
}
PAIRWISE = sorted(n for n, (kind, _) in EXPECTED.items() if kind == "pairwise")


def test_every_name_resolves_with_its_kind():
  assert set(EXPECTED) <= set(L.names())
  for name, (kind, needs_reference) in EXPECTED.items():
    spec = L.get_spec(name)
    assert (spec.name, spec.kind, spec.needs_reference) == (name, kind, needs_reference)
    assert L.get(name) is spec.fn
    assert getattr(L, name) is spec.fn  # Re-exported under its registry name.
    assert name in L.__all__


def test_unknown_name_lists_registered_ones():
  with pytest.raises(registry.UnknownLossError, match="simpo"):
    L.get("no_such_loss")


def test_duplicate_registration_raises():
  for name in ("dpo", "mipo", "kto"):
    with pytest.raises(ValueError, match="already registered"):
      L.register(name)(lambda **kw: None)
  assert L.get("dpo") is L.dpo  # The failed registration changed nothing.


def test_hyper_parameters_are_keyword_only_with_defaults():
  batch_keys = {"policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                "ref_rejected_logps", "chosen_lengths", "rejected_lengths", "chosen_mask",
                "rejected_mask", "policy_logps", "ref_logps", "labels", "policy_kl_logps",
                "ref_kl_logps", "lengths"}
  for name in EXPECTED:
    params = inspect.signature(L.get(name)).parameters.values()
    for p in params:
      assert p.kind is inspect.Parameter.KEYWORD_ONLY, (name, p.name)
      if p.name not in batch_keys:
        assert p.default is not inspect.Parameter.empty, (name, p.name)


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_under_jit_with_shared_metrics(name):
  batch = to_jax(random_pairwise(0, b=4))
  if not L.get_spec(name).needs_reference:
    batch["ref_chosen_logps"] = batch["ref_rejected_logps"] = None
  eager_losses, eager_metrics = L.get(name)(**batch)
  losses, metrics = jax.jit(lambda b: L.get(name)(**b))(batch)
  assert losses.shape == (4,) and losses.dtype == jnp.float32
  np.testing.assert_allclose(losses, eager_losses, rtol=1e-5, atol=1e-6)
  for key in SHARED_METRICS:
    assert metrics[key].shape == (4,), key
    np.testing.assert_allclose(metrics[key], eager_metrics[key], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(metrics["rewards/accuracies"],
                                (np.asarray(metrics["rewards/margins"]) > 0).astype(np.float32))


def test_hyper_parameters_may_be_traced():
  # A hyper-parameter passed as a traced array (a sweep under vmap) still works.
  batch = to_jax(random_pairwise(1, b=4))
  betas = jnp.array([0.1, 0.5])
  for name in ("dpo", "ipo", "simpo", "discopop", "bco_pair"):
    out = jax.vmap(lambda beta: L.get(name)(**batch, beta=beta)[0])(betas)
    np.testing.assert_allclose(out[1], L.get(name)(**batch, beta=0.5)[0], rtol=1e-5, atol=1e-6)


def test_unpaired_and_multi_under_jit():
  z = jnp.zeros(4)
  kto = jax.jit(lambda labels: L.kto(policy_logps=z - 1.0, ref_logps=z, labels=labels,
                                      policy_kl_logps=z, ref_kl_logps=z))
  np.testing.assert_allclose(kto(jnp.array([1.0, 0.0, 1.0, 0.0]))[0], L.kto(
      policy_logps=z - 1.0, ref_logps=z, labels=jnp.array([1.0, 0.0, 1.0, 0.0]),
      policy_kl_logps=z, ref_kl_logps=z)[0], rtol=1e-6)
  multi = to_jax(random_pairwise(2, shape=(3, 2)))
  for name in ("mdpo", "mipo"):
    got = jax.jit(lambda b: L.get(name)(**b, nll_weight=0.1)[0])(multi)
    np.testing.assert_allclose(got, L.get(name)(**multi, nll_weight=0.1)[0], rtol=1e-5)
