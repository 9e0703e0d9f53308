"""The shared train step: DPO closed forms, one reference forward, SFT and DPO through it."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax.losses import dpo
from prefjax.models.transformer import Transformer
from tests.train import helpers


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_closed_form_at_policy_equal_reference(beta, eps):
  lp = jnp.array([-3.0, -7.5, -1.25])
  loss_fn = lambda pc, pr: dpo(policy_chosen_logps=pc, policy_rejected_logps=pr,
                               ref_chosen_logps=lp, ref_rejected_logps=lp - 1.0, beta=beta,
                               label_smoothing=eps)[0].sum()
  losses, _ = dpo(policy_chosen_logps=lp, policy_rejected_logps=lp - 1.0, ref_chosen_logps=lp,
                  ref_rejected_logps=lp - 1.0, beta=beta, label_smoothing=eps)
  np.testing.assert_allclose(losses, math.log(2.0), rtol=1e-6)
  g_c, g_r = jax.grad(loss_fn, argnums=(0, 1))(lp, lp - 1.0)
  # The margin is (pc - rc) - (pr - rr): d/d pc = d/d margin, d/d pr = -d/d margin.
  np.testing.assert_allclose(g_c, -beta * (1 - 2 * eps) / 2, rtol=1e-6)
  np.testing.assert_allclose(g_r, beta * (1 - 2 * eps) / 2, rtol=1e-6)


def test_first_dpo_step_through_the_shared_step_is_log2():
  step, state, ref, batches, _ = helpers.setup("dpo")
  _, m = step(state, batches[0], ref)
  assert float(m["loss"]) == pytest.approx(math.log(2.0), rel=1e-6)
  assert float(m["rewards/margins"]) == pytest.approx(0.0, abs=1e-6)


def _count_model_calls(loss):
  calls = []
  original = Transformer.__call__

  def counting(self, *a, **k):
    calls.append(a[0].shape)
    return original(self, *a, **k)

  step, state, ref, batches, _ = helpers.setup(loss)
  Transformer.__call__ = counting
  try:
    step.lower(state, batches[0], ref)         # trace once
  finally:
    Transformer.__call__ = original
  return calls


def test_reference_forward_runs_once_per_step():
  calls = _count_model_calls("dpo")
  # One policy pass and one reference pass, each over chosen+rejected together (2B rows).
  assert calls == [(16, 32), (16, 32)]
  assert _count_model_calls("sft") == [(8, 32)]


def test_sft_and_dpo_train_through_the_same_step():
  for loss in ("sft", "dpo"):
    step, state, ref, batches, _ = helpers.setup(loss, steps=26, lr=3e-3)
    state, m = step(state, batches[0], ref)
    first = float(m["loss"])
    for i in range(1, 25):
      state, m = step(state, batches[i % 5], ref)
    assert int(state["step"]) == 25
    _, m = step(state, batches[0], ref)          # loss on batch 0 before this update
    assert np.isfinite(float(m["loss"])) and float(m["loss"]) < 0.9 * first, (loss, first, m)
