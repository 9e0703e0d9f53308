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
