"""PPO's loss against a plain-numpy transcription: clipping, value clipping, aggregation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax import losses
from prefjax.errors import ConfigError
import importlib

ppo_lib = importlib.import_module("prefjax.losses.ppo")  # the package re-exports the function as ppo


def np_ppo(x, clip_low, clip_high, value_clip, vf_coef, entropy_coef, kl_est, aggregation):
  m = x["completion_mask"]
  ratio = np.exp(x["policy_token_logps"] - x["old_token_logps"])
  a = x["advantages"]
  pg = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - clip_low, 1 + clip_high))
  v, vo, r = x["policy_values"], x["old_values"], x["returns"]
  vc = vo + np.clip(v - vo, -value_clip, value_clip)
  vl = 0.5 * np.maximum((v - r) ** 2, (vc - r) ** 2)
  lr = x["policy_token_logps"] - x["ref_token_logps"]
  kl = {"k1": lr, "k2": 0.5 * lr ** 2, "k3": np.exp(-lr) - 1 + lr}[kl_est]
  tok = pg + vf_coef * vl - entropy_coef * x["policy_entropy"] + x["kl_coefs"][:, None] * kl
  s = (tok * m).sum(-1)
  if aggregation == "token_mean":
    return s
  if aggregation == "seq_mean":
    return s / np.maximum(m.sum(-1), 1)
  return s / m.shape[-1]


def batch(seed=0, b=6, t=9):
  rng = np.random.default_rng(seed)
  m = np.zeros((b, t), np.float32)
  for i in range(b):
    s = rng.integers(0, 3)
    m[i, s:s + rng.integers(1, t - s + 1)] = 1
  old = -rng.uniform(0.1, 3.0, (b, t))
  x = {
      "policy_token_logps": old + rng.normal(0, 0.3, (b, t)),   # ratios in and out of the clip
      "old_token_logps": old, "ref_token_logps": old + rng.normal(0, 0.2, (b, t)),
      "advantages": rng.normal(size=(b, t)), "returns": rng.normal(size=(b, t)),
      "policy_values": rng.normal(size=(b, t)), "old_values": rng.normal(size=(b, t)),
      "policy_entropy": rng.uniform(0, 2, (b, t)), "kl_coefs": rng.uniform(0, 0.2, b),
      "completion_mask": m,
  }
  x = {k: (v * m if v.ndim == 2 and k != "completion_mask" else v).astype(np.float32)
       for k, v in x.items()}
  x["lengths"] = m.sum(-1)
  return x


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "seq_sum"])
@pytest.mark.parametrize("kl_est", ["k1", "k2", "k3"])
def test_matches_numpy(aggregation, kl_est):
  x = batch()
  hp = dict(clip_low=0.2, clip_high=0.28, value_clip=0.3, vf_coef=0.5, entropy_coef=0.01,
            kl_estimator=kl_est, aggregation=aggregation)
  got, metrics = losses.get("ppo")(**{k: jnp.asarray(v) for k, v in x.items()}, **hp)
  want = np_ppo(x, 0.2, 0.28, 0.3, 0.5, 0.01, kl_est, aggregation)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)
  assert metrics["ppo/clip_fraction"].shape == (6,)


def test_clipping_closed_forms_and_gradients():
  # One token each: A > 0 with ratio above 1 + eps_high: clipped, zero gradient;
  # A < 0 with ratio below 1 - eps_low: clipped, zero gradient; inside: gradient -A * ratio.
  old = jnp.zeros(3)
  lp = jnp.log(jnp.array([1.5, 0.5, 1.05]))
  a = jnp.array([1.0, -1.0, 2.0])
  loss, clipped = ppo_lib.clipped_policy_loss(lp, old, a, clip_low=0.2, clip_high=0.3)
  np.testing.assert_allclose(loss, [-1.3, 0.8, -2.1], rtol=1e-6)
  np.testing.assert_allclose(clipped, [1.0, 1.0, 0.0])
  g = jax.grad(lambda l: ppo_lib.clipped_policy_loss(l, old, a, clip_low=0.2,
                                                     clip_high=0.3)[0].sum())(lp)
  np.testing.assert_allclose(g, [0.0, 0.0, -2.0 * 1.05], rtol=1e-5)
  # Separate low/high epsilons: A > 0 below 1 - eps_low is NOT clipped (pessimistic max).
  loss, clipped = ppo_lib.clipped_policy_loss(jnp.log(jnp.array([0.5])), jnp.zeros(1),
                                              jnp.array([1.0]), clip_low=0.2, clip_high=0.3)
  np.testing.assert_allclose(loss, [-0.5]) and np.testing.assert_allclose(clipped, [0.0])


def test_value_clipping_closed_form():
  v, vo, r = jnp.array([1.0, 0.5, -1.0]), jnp.array([0.0, 0.4, 0.0]), jnp.array([2.0, 0.0, 0.0])
  loss, clipped = ppo_lib.clipped_value_loss(v, vo, r, clip=0.2)
  # Token 0: max((1-2)^2, (0.2-2)^2)/2 = 1.62; token 1: v within the clip -> 0.125;
  # token 2: max(1, 0.04)/2 = 0.5.
  np.testing.assert_allclose(loss, [1.62, 0.125, 0.5], rtol=1e-6)
  np.testing.assert_allclose(clipped, [1.0, 0.0, 0.0])


def test_registration_and_aggregation_check():
  spec = losses.get_spec("ppo")
  assert spec.kind == "ppo" and not spec.needs_reference
  assert ppo_lib.per_token_objective("token_mean") and not ppo_lib.per_token_objective("seq_mean")
  with pytest.raises(ConfigError, match="unknown aggregation 'mean'"):
    ppo_lib.per_token_objective("mean")


def test_fully_masked_rows_give_zero_not_nan():
  x = batch()
  x["completion_mask"][:] = 0
  for agg in ("token_mean", "seq_mean", "seq_sum"):
    got, m = losses.get("ppo")(**{k: jnp.asarray(v) for k, v in x.items()}, aggregation=agg)
    assert np.all(np.asarray(got) == 0) and all(np.isfinite(np.asarray(v)).all() for v in m.values())
