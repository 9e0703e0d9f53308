"""make_optimizer: the warmup-cosine schedule, and per-group lr multipliers (scale_by_path)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from prefjax.train.optimizer import make_optimizer, make_schedule


def _params():
  return {"backbone": {"w": jnp.ones((3, 2)), "norm": jnp.ones((2,))},
          "head": jnp.zeros((2,))}


def _grads():
  return {"backbone": {"w": jnp.full((3, 2), 0.3), "norm": jnp.array([-0.2, 0.5])},
          "head": jnp.array([0.1, -0.4])}


def _updates(**kw):
  tx, _ = make_optimizer(1e-2, 10, warmup_steps=0, weight_decay=0.1, **kw)
  p = _params()
  state = tx.init(p)
  u, _ = tx.update(_grads(), state, p)
  return u


def test_schedule_warms_up_then_decays_to_the_final_fraction():
  s = make_schedule(1.0, 10, 2, final_lr_fraction=0.1)
  assert float(s(0)) == 0.0 and float(s(2)) == 1.0
  np.testing.assert_allclose(float(s(10)), 0.1, rtol=1e-6)


def test_schedule_without_warmup_matches_optax_warmup_cosine():
  ref = optax.warmup_cosine_decay_schedule(0.0, 3e-4, 0, 20, 3e-5)
  s = make_schedule(3e-4, 20, 0)
  np.testing.assert_allclose([float(s(i)) for i in range(25)],
                             [float(ref(i)) for i in range(25)], rtol=1e-6)


def test_lr_multiplier_scales_only_the_named_group():
  base, scaled = _updates(), _updates(lr_multipliers={"head": 100.0})
  np.testing.assert_allclose(scaled["head"], 100.0 * base["head"], rtol=1e-6)
  assert float(jnp.abs(scaled["head"]).min()) > 0
  for k in ("w", "norm"):
    np.testing.assert_array_equal(scaled["backbone"][k], base["backbone"][k])


def test_lr_multiplier_on_an_nnx_state():
  class M(nnx.Module):
    def __init__(self):
      self.backbone = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      self.head = nnx.Param(jnp.zeros((2,)))
  state = nnx.state(M(), nnx.Param)
  grads = jax.tree.map(jnp.ones_like, state)
  tx, _ = make_optimizer(1e-2, 10, lr_multipliers={"head": 10.0})
  tx0, _ = make_optimizer(1e-2, 10)
  u = tx.update(grads, tx.init(state), state)[0]
  u0 = tx0.update(grads, tx0.init(state), state)[0]
  np.testing.assert_allclose(u["head"][...], 10.0 * u0["head"][...], rtol=1e-6)
  np.testing.assert_array_equal(u["backbone"]["kernel"][...], u0["backbone"]["kernel"][...])


def test_without_multipliers_the_chain_is_plain_clipped_adamw():
  ref = optax.chain(optax.clip_by_global_norm(1.0),
                    optax.adamw(make_schedule(1e-2, 10, 0), b1=0.9, b2=0.95, weight_decay=0.1,
                                mask=lambda p: {"backbone": {"w": True, "norm": False},
                                                "head": False}))
  p = _params()
  u_ref, _ = ref.update(_grads(), ref.init(p), p)
  u = _updates()
  for a, b in zip(np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]),
                  np.concatenate([np.ravel(x) for x in jax.tree.leaves(u_ref)])):
    np.testing.assert_allclose(a, b, rtol=1e-6)


# bfloat16 Adam moments (opt_state_dtype). Stated tolerance: over 20 DPO steps of a tiny model
# the per-step loss with bfloat16 moments is within LOSS_ATOL (absolute) of the float32-moment
# run (measured on CPU: at most 1.7e-3, on losses between 0.2 and 1.1; both start at log 2).
MOMENT_STEPS = 20
LOSS_ATOL = 5e-3


def _dpo_losses(opt_state_dtype):
  from prefjax import sharding
  from prefjax.data import pipeline
  from prefjax.models import Transformer, make_config
  from prefjax.testbed import world
  from prefjax.train.objective import make_objective
  from prefjax.train.step import init_state, make_train_step
  from tests.train import helpers
  cfg = make_config(None, vocab_size=helpers.TOK.vocab_size, overrides=dict(
      dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128, max_len=32))
  model = Transformer(cfg, nnx.Rngs(0))
  graphdef, st = nnx.split(model)
  params = nnx.to_pure_dict(st)
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  param_sh = sharding.param_shardings(model, mesh)
  tx, schedule = make_optimizer(1e-3, MOMENT_STEPS, warmup_steps=1,
                                opt_state_dtype=opt_state_dtype)
  state, state_sh = init_state(jax.tree.map(jnp.copy, params), tx, param_sh)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state["opt_state"]))
  batches = pipeline.batched(world.preference_pairs(world.WorldConfig(tasks=("sort",)), 256),
                             pipeline.encode_pair(helpers.TOK, 32), 8, seed=0,
                             num_steps=MOMENT_STEPS)
  step = make_train_step(graphdef, make_objective("dpo", {"beta": 0.1}), tx, schedule,
                         state_shardings=state_sh, batch_sharding=sharding.batch_sharding(mesh),
                         ref_shardings=param_sh)
  ref = jax.device_put(params, param_sh)
  losses = []
  for i in range(MOMENT_STEPS):
    state, m = step(state, batches[i], ref)
    losses.append(float(m["loss"]))
  return np.array(losses), state_bytes, state


def test_bfloat16_moments_track_float32_and_halve_the_state():
  l32, bytes32, _ = _dpo_losses(None)
  l16, bytes16, state = _dpo_losses("bfloat16")
  print("max |loss difference| over", MOMENT_STEPS, "steps:", np.abs(l16 - l32).max())
  assert np.abs(l32 - np.log(2)).max() > 0.3          # the updates move the loss far from log 2
  np.testing.assert_allclose(l16, l32, atol=LOSS_ATOL)
  adam = state["opt_state"][1][0]
  for leaf in jax.tree.leaves((adam.mu, adam.nu)):
    assert leaf.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves(state["params"]):
    assert leaf.dtype == jnp.float32                  # the parameters stay float32
  assert abs(bytes16 / bytes32 - 0.5) < 1e-3, (bytes16, bytes32)   # only counters besides


def test_unknown_opt_state_dtype_is_a_config_error():
  import pytest
  from prefjax.errors import ConfigError
  with pytest.raises(ConfigError, match="opt_state_dtype"):
    make_optimizer(1e-3, 10, opt_state_dtype="float16")
