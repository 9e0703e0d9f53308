"""mdpo and mipo: numpy references, K = 1 equivalence, masks, the unbiased mIPO estimator."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from loss_helpers import np_log_sigmoid, random_pairwise, to_jax
from prefjax import losses as L

B, K = 6, 4


def random_multi(seed=0, ragged=True):
  """A ``[B, K]`` batch with masks giving groups of 1..K valid samples (NaN padding)."""
  batch = random_pairwise(seed, shape=(B, K))
  rng = np.random.default_rng(seed + 100)
  if ragged:
    for side in ("chosen", "rejected"):
      counts = rng.integers(1, K + 1, B)
      counts[0] = K  # At least one full group, and
      counts[1] = 2 if side == "chosen" else 3  # groups of every size across the batch.
      mask = np.arange(K)[None, :] < counts[:, None]
      batch[f"{side}_mask"] = mask.astype(np.float32)
  return batch


def _valid(b, side, i):
  """The valid samples of group i on one side (numpy float64)."""
  mask = b.get(f"{side}_mask")
  keep = slice(None) if mask is None else mask[i] > 0.5
  get = lambda key: np.asarray(b[key][i][keep], np.float64)
  return (get(f"policy_{side}_logps"), get(f"ref_{side}_logps"), get(f"{side}_lengths"))


# Transcribed per group with explicit slicing of the valid samples.
def np_mdpo(b, beta=0.1, label_smoothing=0.0, nll_weight=0.0):
  out = []
  for i in range(len(b["policy_chosen_logps"])):
    pw, rw, lw = _valid(b, "chosen", i)
    pl, rl, _ = _valid(b, "rejected", i)
    h = beta * np.mean(pw - rw) - beta * np.mean(pl - rl)
    loss = -(1 - label_smoothing) * np_log_sigmoid(h) - label_smoothing * np_log_sigmoid(-h)
    out.append(loss + nll_weight * np.mean(-pw / lw))
  return np.array(out)


def np_mipo(b, beta=0.1, average_log_ratios=True, unbiased=False, nll_weight=0.0):
  out = []
  for i in range(len(b["policy_chosen_logps"])):
    pw, rw, lw = _valid(b, "chosen", i)
    pl, rl, ll = _valid(b, "rejected", i)
    xw, xl = pw - rw, pl - rl
    if average_log_ratios:
      xw, xl = xw / lw, xl / ll
    loss = (np.mean(xw) - np.mean(xl) - 1 / (2 * beta)) ** 2
    if unbiased:
      for x in (xw, xl):
        if len(x) > 1:
          loss -= np.var(x, ddof=1) / len(x)
    out.append(loss + nll_weight * np.mean(-pw / lw))
  return np.array(out)


@pytest.mark.parametrize("ragged", [False, True])
def test_mdpo_matches_numpy_reference(ragged):
  for seed, hp in enumerate([{}, {"beta": 0.5, "label_smoothing": 0.1},
                             {"beta": 1.0, "nll_weight": 0.5}]):
    batch = random_multi(seed, ragged)
    got, m = L.mdpo(**to_jax(batch), **hp)
    np.testing.assert_allclose(got, np_mdpo(batch, **hp), rtol=1e-5, atol=1e-6)
    assert got.shape == (B,) and m["rewards/margins"].shape == (B,)


@pytest.mark.parametrize("ragged", [False, True])
def test_mipo_matches_numpy_reference(ragged):
  for seed, hp in enumerate([{}, {"beta": 0.5, "unbiased": True},
                             {"beta": 1.0, "average_log_ratios": False, "unbiased": True,
                              "nll_weight": 0.3},
                             {"beta": 0.2, "average_log_ratios": False}]):
    batch = random_multi(seed, ragged)
    got, _ = L.mipo(**to_jax(batch), **hp)
    np.testing.assert_allclose(got, np_mipo(batch, **hp), rtol=1e-5, atol=1e-5)


def test_k1_equals_pairwise():
  pairwise = to_jax(random_pairwise(7))
  multi = {k: v[:, None] for k, v in pairwise.items()}
  for hp in ({}, {"beta": 0.5, "label_smoothing": 0.2}):
    got, m = L.mdpo(**multi, **hp)
    want, m_want = L.dpo(**pairwise, **hp)
    np.testing.assert_allclose(got, want, atol=1e-6)
    for key in ("rewards/margins", "rewards/accuracies", "logps/chosen"):
      np.testing.assert_allclose(m[key], m_want[key], atol=1e-6)
  for hp in ({}, {"beta": 0.5, "average_log_ratios": False}, {"unbiased": True}):
    got, _ = L.mipo(**multi, **hp)
    want, _ = L.ipo(**pairwise, **{k: v for k, v in hp.items() if k != "unbiased"})
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name,hp", [("mdpo", {"nll_weight": 0.5}),
                                     ("mipo", {"unbiased": True, "nll_weight": 0.5})])
def test_masking_equals_slicing_and_ignores_nan_padding(name, hp):
  fn = L.get(name)
  full = random_pairwise(8, shape=(B, K))
  kept = 3
  sliced = {k: v[:, :kept] for k, v in full.items()}
  padded = {k: v.copy() for k, v in full.items()}
  for key in ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps"):
    padded[key][:, kept:] = np.nan
  mask = np.zeros((B, K), np.float32)
  mask[:, :kept] = 1.0
  padded["chosen_mask"] = padded["rejected_mask"] = mask

  def loss_and_grad(batch):
    batch = to_jax(batch)
    total = lambda pc, pr: jnp.sum(fn(**{**batch, "policy_chosen_logps": pc,
                                         "policy_rejected_logps": pr}, **hp)[0])
    return fn(**batch, **hp)[0], jax.grad(total, argnums=(0, 1))(
        batch["policy_chosen_logps"], batch["policy_rejected_logps"])

  want, (gw_c, gw_r) = loss_and_grad(sliced)
  got, (g_c, g_r) = loss_and_grad(padded)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(g_c[:, :kept], gw_c, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(g_r[:, :kept], gw_r, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(g_c[:, kept:], 0.0)  # Finite: no NaN leaks from padding.


@pytest.mark.parametrize("name", ["mdpo", "mipo"])
def test_finite_for_extreme_log_ratios(name):
  fn = L.get(name)
  for s in (1e3, 1e4):
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], (B, K)).astype(np.float32)
    ref = np.full((B, K), -5.0, np.float32)
    batch = to_jax({"policy_chosen_logps": ref + s * signs,
                    "policy_rejected_logps": ref - s * signs[:, ::-1],
                    "ref_chosen_logps": ref, "ref_rejected_logps": ref,
                    "chosen_lengths": np.full((B, K), 5.0, np.float32),
                    "rejected_lengths": np.full((B, K), 5.0, np.float32)})
    hp = {"nll_weight": 1.0} if name == "mdpo" else {"unbiased": True, "nll_weight": 1.0}
    total = lambda pc, pr: jnp.sum(fn(**{**batch, "policy_chosen_logps": pc,
                                         "policy_rejected_logps": pr}, **hp)[0])
    losses = fn(**batch, **hp)[0]
    grads = jax.grad(total, argnums=(0, 1))(batch["policy_chosen_logps"],
                                             batch["policy_rejected_logps"])
    for x in (losses, *grads):
      assert np.all(np.isfinite(np.asarray(x)))


def test_metrics():
  # Group 0: chosen log-ratios [2, 0] (mean 1), rejected [-1, -1, -1] masked to [-1, -1];
  # group 1 reversed. An all-masked group has reward 0.
  pc = np.array([[-3.0, -5.0, 0.0], [-6.0, -6.0, -6.0]], np.float32)
  rc = np.full((2, 3), -5.0, np.float32)
  pr = np.array([[-8.0, -8.0, -8.0], [-2.0, -4.0, -9.0]], np.float32)
  rr = np.full((2, 3), -7.0, np.float32)
  chosen_mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
  rejected_mask = np.array([[1, 1, 0], [1, 1, 0]], np.float32)
  batch = to_jax({"policy_chosen_logps": pc, "policy_rejected_logps": pr,
                  "ref_chosen_logps": rc, "ref_rejected_logps": rr,
                  "chosen_mask": chosen_mask, "rejected_mask": rejected_mask})
  _, m = L.mdpo(**batch, beta=0.5)
  np.testing.assert_allclose(m["rewards/chosen"], [0.5, -0.5])
  np.testing.assert_allclose(m["rewards/rejected"], [-0.5, 2.0])
  np.testing.assert_array_equal(m["rewards/accuracies"], [1.0, 0.0])
  np.testing.assert_allclose(m["logps/chosen"], [-4.0, -6.0])
  np.testing.assert_allclose(m["logps/rejected"], [-8.0, -3.0])
  _, m = L.mipo(**batch, beta=0.5, average_log_ratios=False)
  np.testing.assert_allclose(m["rewards/margins"], [1.0, -2.5])
  # s^2 / K: chosen [2, 0] -> 2 / 2; rejected [-1, -1] -> 0 | chosen [-1]*3 -> 0; [5, 3] -> 1.
  np.testing.assert_allclose(m["mipo/variance_correction"], [1.0, 1.0])
  empty = {**batch, "chosen_mask": np.zeros((2, 3), np.float32)}
  losses, m = L.mdpo(**empty)
  np.testing.assert_array_equal(m["rewards/chosen"], 0.0)
  assert np.all(np.isfinite(np.asarray(losses)))
  # At policy == reference all rewards are 0: mDPO = log 2, mIPO = (1/(2 beta))^2 (plug-in).
  same = {**batch, "policy_chosen_logps": rc, "policy_rejected_logps": rr}
  np.testing.assert_allclose(L.mdpo(**same)[0], np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(L.mipo(**same, beta=0.5, average_log_ratios=False)[0], 1.0)


def test_unbiased_mipo_matches_population_objective():
  # rho_w ~ N(mu_w, sigma_w^2), rho_l ~ N(mu_l, sigma_l^2), ragged groups of 2..4 samples.
  # Population objective (mu_w - mu_l - 1/(2 beta))^2; the plug-in's expected excess is
  # sigma_w^2 / K_w + sigma_l^2 / K_l.
  rng = np.random.default_rng(0)
  n, k, beta = 20000, 4, 0.5
  mu_w, mu_l, sigma_w, sigma_l = 0.8, -0.7, 1.0, 1.5
  target = (mu_w - mu_l - 1 / (2 * beta)) ** 2
  k_w = rng.integers(2, k + 1, n)
  k_l = rng.integers(2, k + 1, n)
  batch = to_jax({
      "policy_chosen_logps": rng.normal(mu_w, sigma_w, (n, k)).astype(np.float32),
      "policy_rejected_logps": rng.normal(mu_l, sigma_l, (n, k)).astype(np.float32),
      "ref_chosen_logps": np.zeros((n, k), np.float32),
      "ref_rejected_logps": np.zeros((n, k), np.float32),
      "chosen_mask": (np.arange(k) < k_w[:, None]).astype(np.float32),
      "rejected_mask": (np.arange(k) < k_l[:, None]).astype(np.float32),
  })
  plug_in = np.asarray(L.mipo(**batch, beta=beta, average_log_ratios=False)[0], np.float64)
  unbiased = np.asarray(L.mipo(**batch, beta=beta, average_log_ratios=False, unbiased=True)[0],
                        np.float64)
  plug_in_bias = plug_in.mean() - target
  unbiased_bias = unbiased.mean() - target
  expected_excess = np.mean(sigma_w**2 / k_w + sigma_l**2 / k_l)  # ~0.96
  np.testing.assert_allclose(plug_in_bias, expected_excess, rtol=0.05)
  assert abs(unbiased_bias) < abs(plug_in_bias) / 10
  assert abs(unbiased_bias) < 4 * unbiased.std() / np.sqrt(n)  # Zero within sampling noise.
