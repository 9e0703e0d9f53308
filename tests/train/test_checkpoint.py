"""Orbax round trips of the full train state and of bare parameters."""
import jax
import numpy as np

from prefjax.train.checkpoint import Checkpointer, load_params, save_params
from tests.train import helpers


def test_train_state_round_trip(tmp_path):
  step, state, ref, batches, _ = helpers.setup("dpo", steps=4)
  for i in range(3):
    state, _ = step(state, batches[i], ref)
  saved = jax.device_get(state)
  ckpt = Checkpointer(str(tmp_path / "ck"), every=1, keep=2)
  ckpt.save(3, state)
  assert ckpt.latest_step() == 3
  shardings = jax.tree.map(lambda x: x.sharding, state)
  restored = ckpt.restore(3, state, shardings)
  jax.tree.map(np.testing.assert_array_equal, saved, jax.device_get(restored))
  assert jax.tree.structure(saved) == jax.tree.structure(restored)
  # The restored state keeps training exactly as the original would.
  a, ma = step(restored, batches[3], ref)
  b, mb = step(jax.device_put(saved, shardings), batches[3], ref)
  assert float(ma["loss"]) == float(mb["loss"])


def test_bare_params_round_trip(tmp_path):
  _, _, params = helpers.tiny_lm()
  save_params(str(tmp_path / "p"), params)
  back = load_params(str(tmp_path / "p"), like=params)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(back))
