"""Non-finite losses: skip the update inside the compiled step (count it, stop after N in a
row) or stop; the last checkpoint always holds a finite state."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax import sharding
from prefjax.data import pipeline
from prefjax.testbed import world
from prefjax.train.checkpoint import Checkpointer
from prefjax.train.loop import NonFiniteLossError, run_stage
from prefjax.train.metrics_writer import MetricsWriter
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state, make_train_step
from tests.train import helpers

STEPS = 8


@pytest.fixture(scope="module")
def world_():
  """(steps {skip: jitted step}, fresh-state factory, shardings, ref, batches, batch_sh)."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  model, graphdef, params = helpers.tiny_lm(0)
  param_sh = sharding.param_shardings(model, mesh)
  objective = make_objective("dpo", {"beta": 0.1})
  tx, schedule = make_optimizer(1e-3, STEPS, warmup_steps=2)
  _, state_sh = init_state(jax.tree.map(jnp.copy, params), tx, param_sh)
  batch_sh = sharding.batch_sharding(mesh)
  steps = {skip: make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                                 batch_sharding=batch_sh, ref_shardings=param_sh,
                                 skip_nonfinite=skip) for skip in (False, True)}
  fresh = lambda: init_state(jax.tree.map(jnp.copy, params), tx, param_sh)[0]
  pairs = world.preference_pairs(world.WorldConfig(tasks=("sort",)), 64)
  batches = pipeline.batched(pairs, pipeline.encode_pair(helpers.TOK, 32), 8, seed=0,
                             num_steps=STEPS)
  return steps, fresh, state_sh, jax.device_put(params, param_sh), batches, batch_sh


class Poisoned:
  """batches[i] with example_mask = NaN at the ``bad`` steps (a NaN loss and gradient)."""

  def __init__(self, batches, bad):
    self.batches, self.bad = batches, set(bad)

  def __getitem__(self, i):
    b = dict(self.batches[i])
    if i in self.bad:
      b["example_mask"] = np.full_like(b["example_mask"], np.nan)
    return b


def _host(tree):
  return jax.device_get(tree)


def test_skip_keeps_old_state_and_matches_plain_step_when_finite(world_):
  steps, fresh, _, ref, batches, batch_sh = world_
  s_plain, m_plain = steps[False](fresh(), jax.device_put(batches[0], batch_sh), ref)
  s_skip, m_skip = steps[True](fresh(), jax.device_put(batches[0], batch_sh), ref)
  jax.tree.map(np.testing.assert_array_equal, _host(s_plain), _host(s_skip))
  assert float(m_skip["train/skipped"]) == 0.0 and float(m_skip["loss"]) == float(m_plain["loss"])

  before = _host(s_skip)
  after, m = steps[True](s_skip, jax.device_put(Poisoned(batches, {1})[1], batch_sh), ref)
  after = _host(after)
  assert float(m["train/skipped"]) == 1.0 and np.isnan(float(m["loss"]))
  jax.tree.map(np.testing.assert_array_equal, before["params"], after["params"])
  jax.tree.map(np.testing.assert_array_equal, before["opt_state"], after["opt_state"])
  assert int(after["step"]) == int(before["step"]) + 1     # the batch was consumed


def _run(world_, tmp_path, bad, **kw):
  steps, fresh, state_sh, ref, batches, batch_sh = world_
  ck = Checkpointer(str(tmp_path / "ck"), every=2, keep=10)
  writer = MetricsWriter(str(tmp_path), tensorboard=False)
  try:
    return run_stage("dpo", train_step=steps[kw.get("nonfinite", "stop") == "skip"],
                     state=fresh(), state_shardings=state_sh, ref_params=ref,
                     batches=Poisoned(batches, bad), batch_sharding=batch_sh, num_steps=STEPS,
                     checkpointer=ck, writer=writer, log_every=1, progress=False, **kw), ck
  finally:
    ck.close()


def _lines(tmp_path):
  return [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]


def test_skip_mode_counts_skips_and_equals_training_without_the_bad_steps(world_, tmp_path):
  steps, fresh, _, ref, batches, batch_sh = world_
  final, _ = _run(world_, tmp_path, bad={2, 3}, nonfinite="skip", max_skips_in_a_row=3)
  # Reference: the plain step on the good batches; a bad step only advances the counter.
  state = fresh()
  for i in range(STEPS):
    if i in (2, 3):
      state = dict(state, step=state["step"] + 1)
    else:
      state, _ = steps[False](state, jax.device_put(batches[i], batch_sh), ref)
  jax.tree.map(np.testing.assert_array_equal, _host(state), _host(final))
  lines = _lines(tmp_path)
  assert [x["train/skipped_steps"] for x in lines] == [0, 0, 1, 1, 0, 0, 0, 0]
  assert [x["loss"] for x in lines][2:4] == ["nan", "nan"]
  assert all(np.isfinite(x["loss"]) for i, x in enumerate(lines) if i not in (2, 3))


def test_skip_mode_stops_after_n_in_a_row_keeping_a_good_checkpoint(world_, tmp_path):
  with pytest.raises(NonFiniteLossError, match=r"3 steps in a row had a non-finite loss or "
                                               r"gradient \(up to step 6\); stopping \(last "
                                               r"good checkpoint: 4\)"):
    _run(world_, tmp_path, bad=set(range(3, STEPS)), nonfinite="skip", max_skips_in_a_row=3)
  _assert_latest_checkpoint_finite(world_, tmp_path, 4)


def test_stop_mode_raises_and_never_checkpoints_the_nan_state(world_, tmp_path):
  with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 4; stopping \(last good "
                                               r"checkpoint: 2\)"):
    _run(world_, tmp_path, bad={3})
  _assert_latest_checkpoint_finite(world_, tmp_path, 2)


def _assert_latest_checkpoint_finite(world_, tmp_path, expected_step):
  _, fresh, state_sh, _, _, _ = world_
  ck = Checkpointer(str(tmp_path / "ck"), every=2, keep=10)
  step, state = ck.restore_latest_valid(fresh(), state_sh)
  ck.close()
  assert step == expected_step
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(_host(state)))
