"""``Grid.train`` (study grids) runs the shared loop: the same params as stepping the
compiled step by hand, the final loss, and a non-finite loss stops the grid."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax.data import pipeline
from prefjax.studies.align_grid import Grid
from prefjax.testbed import world
from prefjax.train.loop import NonFiniteLossError
from prefjax.train.objective import make_objective
from prefjax.train.step import init_state


@pytest.fixture(scope="module")
def grid_and_pairs():
  grid = Grid.make(n_layers=1, dim=32, seed=0)
  pairs = world.preference_pairs(world.WorldConfig(tasks=("sort",), seed=0), 64)
  return grid, pairs


def test_train_equals_stepping_by_hand(grid_and_pairs):
  grid, pairs = grid_and_pairs
  obj = make_objective("dpo", {"beta": 0.1})
  enc = pipeline.encode_pair(grid.tok, grid.max_len)
  ref = grid.init_params
  pol, loss = grid.train(ref, obj, pairs, enc, steps=3, batch_size=8, lr=1e-2, ref_params=ref)
  # by hand: the same compiled step on the same batches
  tx, step = grid._step(obj, 1e-2, 3, 0)
  state, _ = init_state(jax.tree.map(jnp.copy, ref), tx, grid.param_sh)
  batches = pipeline.batched(pairs, enc, 8, seed=grid.seed, num_steps=3)
  for i in range(3):
    state, m = step(state, jax.device_put(batches[i], grid.batch_sh), ref)
  assert loss == pytest.approx(float(m["loss"]), rel=0, abs=0)
  for a, b in zip(jax.tree.leaves(pol), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(pol),
                                                          jax.tree.leaves(ref)))
  assert moved > 0.0


def test_nonfinite_loss_stops_the_grid(grid_and_pairs):
  grid, pairs = grid_and_pairs
  obj = make_objective("dpo", {"beta": float("nan")})
  enc = pipeline.encode_pair(grid.tok, grid.max_len)
  with pytest.raises(NonFiniteLossError, match="loss is nan at step 2"):
    grid.train(grid.init_params, obj, pairs, enc, steps=2, batch_size=8, lr=1e-2,
               ref_params=grid.init_params)


def test_lr_multipliers_scale_one_group(grid_and_pairs):
  grid, pairs = grid_and_pairs
  obj = make_objective("dpo", {"beta": 0.1})
  enc = pipeline.encode_pair(grid.tok, grid.max_len)
  ref = grid.init_params
  name = sorted(ref)[0]
  base, _ = grid.train(ref, obj, pairs, enc, steps=1, batch_size=8, lr=1e-3, ref_params=ref)
  scaled, _ = grid.train(ref, obj, pairs, enc, steps=1, batch_size=8, lr=1e-3, ref_params=ref,
                         lr_multipliers={name: 10.0})
  for key in ref:
    for r, b, s in zip(jax.tree.leaves(ref[key]), jax.tree.leaves(base[key]),
                       jax.tree.leaves(scaled[key])):
      d_base, d_scaled = np.asarray(b) - np.asarray(r), np.asarray(s) - np.asarray(r)
      want = 10.0 * d_base if key == name else d_base
      np.testing.assert_allclose(d_scaled, want, rtol=1e-4, atol=1e-7)
  assert any(np.abs(np.asarray(b) - np.asarray(r)).max() > 0
             for r, b in zip(jax.tree.leaves(ref[name]), jax.tree.leaves(base[name])))
