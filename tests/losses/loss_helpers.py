"""Shared builders for the loss tests: random batches and the extreme-input check.

Imported by the test modules of this folder (pytest puts the folder on sys.path).
"""
import jax
import jax.numpy as jnp
import numpy as np

PAIRWISE_KEYS = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                 "ref_rejected_logps", "chosen_lengths", "rejected_lengths")
SHARED_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins",
                  "rewards/accuracies", "logps/chosen", "logps/rejected")


def random_pairwise(seed=0, b=16, shape=None):
  """A float32 pairwise batch (numpy) with log-ratios of order 1 and lengths in [1, 20].

  Values are float32 so the float64 numpy references see exactly what jax sees.
  """
  rng = np.random.default_rng(seed)
  shape = (b,) if shape is None else shape
  ref_c = rng.uniform(-12.0, -1.0, shape)
  ref_r = rng.uniform(-12.0, -1.0, shape)
  batch = {  # Valid (negative) log-probs: ORPO's reference takes log(1 - exp(logp)).
      "policy_chosen_logps": np.minimum(ref_c + rng.normal(0.0, 2.0, shape), -0.1),
      "policy_rejected_logps": np.minimum(ref_r + rng.normal(0.0, 2.0, shape), -0.1),
      "ref_chosen_logps": ref_c,
      "ref_rejected_logps": ref_r,
      "chosen_lengths": rng.integers(1, 21, shape).astype(float),
      "rejected_lengths": rng.integers(1, 21, shape).astype(float),
  }
  return {k: v.astype(np.float32) for k, v in batch.items()}


def extreme_pairwise(magnitude=1e3):
  """Log-ratios of +-magnitude on each side, every sign combination (B = 8)."""
  s = magnitude
  ratio_c = np.array([s, -s, s, -s, s, -s, 0.0, 0.0], np.float32)
  ratio_r = np.array([s, -s, -s, s, 0.0, 0.0, s, -s], np.float32)
  ref = np.full(8, -5.0, np.float32)
  return {
      "policy_chosen_logps": ref + ratio_c,
      "policy_rejected_logps": ref + ratio_r,
      "ref_chosen_logps": ref,
      "ref_rejected_logps": ref,
      "chosen_lengths": np.full(8, 7.0, np.float32),
      "rejected_lengths": np.full(8, 3.0, np.float32),
  }


def to_jax(batch):
  return {k: (None if v is None else jnp.asarray(v)) for k, v in batch.items()}


def assert_finite_loss_and_grad(fn, batch, **hparams):
  """The per-example loss and its gradient w.r.t. both policy log-prob arrays are finite."""
  batch = to_jax(batch)

  def total(pc, pr):
    return jnp.sum(fn(**{**batch, "policy_chosen_logps": pc, "policy_rejected_logps": pr},
                      **hparams)[0])

  losses, _ = fn(**batch, **hparams)
  grads = jax.grad(total, argnums=(0, 1))(batch["policy_chosen_logps"],
                                           batch["policy_rejected_logps"])
  assert np.all(np.isfinite(np.asarray(losses))), losses
  for g in grads:
    assert np.all(np.isfinite(np.asarray(g))), g


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))
