"""Gradient accumulation: k micro-batches of b equal one batch of k*b, for every loss kind.

The reference is the plain (unsplit) step on the same [k*b] batch; the accumulated step must
give the same loss, metrics and gradients to 1e-6 (float32).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prefjax.data import pipeline
from prefjax.data.collate import stack
from prefjax.models import Transformer, make_config
from prefjax.rewards.model import RewardModel
from prefjax.testbed import world
from prefjax.train.accumulation import merge_micro, split_micro
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import make_value_and_grad
from tests.train import helpers

TOK = helpers.TOK
WCFG = world.WorldConfig(tasks=("sort",))
N, K, T = 8, 4, 32     # whole batch of N rows, K micro-batches of N / K


def _batch(kind):
  if kind == "sft":
    exs, enc = world.sft_examples(WCFG, N), pipeline.encode_sft(TOK, T)
  elif kind in ("pairwise", "reward"):
    exs, enc = world.preference_pairs(WCFG, N), pipeline.encode_pair(TOK, T)
  elif kind == "multi":
    exs, enc = world.group_preferences(WCFG, N, k=3), pipeline.encode_group(TOK, T, 3)
  else:
    return jax.tree.map(jnp.asarray, pipeline.encode_unpaired(TOK, T)(
        world.unpaired_examples(WCFG, N)))
  batch = stack([enc(ex) for ex in exs])
  batch["example_mask"][-1] = 0.0          # a padded example must not count anywhere
  return jax.tree.map(jnp.asarray, batch)


def _model(kind, seed=0):
  cfg = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
      dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=T))
  model = (RewardModel if kind == "reward" else Transformer)(cfg, nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  if kind == "reward":     # a non-zero head, else the backbone gets no gradient at all
    params["head"] = jax.random.normal(jax.random.key(1), params["head"].shape) * 0.3
  return graphdef, params


def _perturbed(params, seed):
  """A policy different from the reference, so that rewards and z0 are not all zero."""
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return tdef.unflatten([x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


_slow = pytest.mark.slow
CASES = [("sft", {}), ("dpo", {"beta": 0.1}), ("kto", {"beta": 0.5}),
         pytest.param("ipo", {"beta": 0.1}, marks=_slow), pytest.param("simpo", {}, marks=_slow),
         # beta 0.1 as for the other pairwise losses: the loss's float32 rounding scales with
         # beta x ulp(|log p|), and this tiny random model's sequence log-probs reach ~330
         # (ulp 3e-5): with beta 0.5, AOT's plain and accumulated losses differed by 2.8e-6
         # relative on one CPU (the forward fused differently in the two programs), by 6e-7
         # with beta 0.1.
         pytest.param("aot", {"beta": 0.1}, marks=_slow),
         pytest.param("mdpo", {"beta": 0.1}, marks=_slow),
         pytest.param("mipo", {"beta": 0.1}, marks=_slow),
         pytest.param("bradley_terry", {}, marks=_slow)]


@pytest.mark.parametrize("loss,hparams", CASES)
def test_accumulated_equals_whole_batch(loss, hparams):
  """Loss to 1e-6 relative; gradients to 1e-5 of their largest entry (float32 rounding: the
  micro-batch sums are reassociated; measured max 5e-6, KTO/SFT/BT 5e-7)."""
  objective = make_objective(loss, hparams)
  kind = objective.spec.kind
  graphdef, ref = _model(kind)
  params = _perturbed(ref, 7)
  batch = _batch(kind)
  plain = jax.jit(make_value_and_grad(graphdef, objective))
  accum = jax.jit(make_value_and_grad(graphdef, objective, accum_steps=K))
  (l1, m1), g1 = plain(params, batch, ref)
  (l2, m2), g2 = accum(params, batch, ref)
  assert np.isfinite(float(l1)) and float(l1) != 0.0
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6, atol=1e-7)
  assert set(m1) == set(m2)
  for name in m1:
    np.testing.assert_allclose(np.asarray(m2[name]), np.asarray(m1[name]), rtol=1e-5, atol=1e-6,
                               err_msg=name)
  flat1, flat2 = jax.tree.leaves(g1), jax.tree.leaves(g2)
  scale = max(float(jnp.abs(g).max()) for g in flat1)
  assert scale > 0
  for a, b in zip(flat1, flat2):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale, rtol=0)


def test_kto_reference_point_is_the_whole_batch_mean():
  """z0 (metric ``kl``) must be the mean over all k*b rows, not a mean of micro-batch means."""
  objective = make_objective("kto", {"beta": 0.5})
  graphdef, ref = _model("unpaired")
  params = _perturbed(ref, 3)
  batch = _batch("unpaired")
  (_, m), _ = jax.jit(make_value_and_grad(graphdef, objective, accum_steps=K))(params, batch, ref)
  fwd = lambda p, prefix: objective.forward(nnx.merge(graphdef, p), batch)[prefix]
  pol, refl = fwd(params, "policy_kl_logps"), fwd(ref, "policy_kl_logps")
  z0 = max(float(np.mean(np.asarray(pol) - np.asarray(refl))), 0.0)
  assert z0 > 0
  np.testing.assert_allclose(float(m["kl"]), z0, rtol=1e-5)


def test_row_layout_batches_are_a_config_error():
  from prefjax.errors import ConfigError
  objective = make_objective("dpo", {"beta": 0.1})
  graphdef, params = _model("pairwise")
  batch = {"rows_input_ids": jnp.zeros((4, T), jnp.int32), "example_mask": jnp.ones(4)}
  with pytest.raises(ConfigError, match="layout='plain'"):
    make_value_and_grad(graphdef, objective, accum_steps=K)(params, batch, params)


def test_split_and_merge_are_inverse_and_strided():
  x = jnp.arange(12).reshape(12, 1)
  s = split_micro({"x": x}, 3)["x"]
  assert s.shape == (3, 4, 1)
  np.testing.assert_array_equal(s[1, :, 0], [1, 4, 7, 10])      # rows i, i+k, ...
  np.testing.assert_array_equal(merge_micro({"x": s})["x"], x)
  with pytest.raises(ValueError, match="does not split"):
    split_micro({"x": jnp.zeros((10, 2))}, 3)


@pytest.mark.slow
def test_train_step_with_accumulation_matches_plain_step():
  """Two optimizer steps through ``make_train_step``: params equal with and without k=4."""
  from prefjax import sharding
  from prefjax.train.step import init_state, make_train_step
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  model, graphdef, params = helpers.tiny_lm(0)
  param_sh = sharding.param_shardings(model, mesh)
  objective = make_objective("dpo", {"beta": 0.1})
  tx, schedule = make_optimizer(1e-3, 4, warmup_steps=1)
  batches = pipeline.batched(world.preference_pairs(WCFG, 64), pipeline.encode_pair(TOK, T), N,
                             seed=0, num_steps=2)
  results = []
  for k in (1, K):
    state, state_sh = init_state(jax.tree.map(jnp.copy, params), tx, param_sh)
    step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                           batch_sharding=sharding.batch_sharding(mesh), ref_shardings=param_sh,
                           accum_steps=k)
    ref = jax.device_put(params, param_sh)
    for i in range(2):
      state, m = step(state, batches[i], ref)
    results.append((state, m))
  (s1, m1), (s2, m2) = results
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
  np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


def test_accumulation_with_lora_compose():
  """LoRA: trainable adapters, frozen base as ref_params and as the policy's base."""
  from prefjax.models.lora import LoraConfig, apply_lora, init_lora
  objective = make_objective("dpo", {"beta": 0.1})
  graphdef, base = _model("pairwise")
  lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q", "down"))
  lora = _perturbed(init_lora(base, lcfg, jax.random.key(0)), 5)
  compose = lambda trainable, frozen: apply_lora(frozen, trainable, lcfg.scale)
  batch = _batch("pairwise")
  (l1, _), g1 = jax.jit(make_value_and_grad(graphdef, objective, compose))(lora, batch, base)
  (l2, _), g2 = jax.jit(make_value_and_grad(graphdef, objective, compose, accum_steps=K))(
      lora, batch, base)
  np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g1))
  assert scale > 0
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale, rtol=0)
