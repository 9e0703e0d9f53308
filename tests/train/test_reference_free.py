"""Every loss kind trains through the one shared step; reference-free losses skip the
reference forward pass (counted at trace time and in compiled FLOPs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax import sharding
from prefjax.data import pipeline
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train import config as config_lib
from prefjax.train import data_source
from prefjax.train import objective as objective_lib
from prefjax.train.optimizer import make_optimizer
from prefjax.train.model_source import build_model
from prefjax.train.stages import preference_objective
from prefjax.train.step import init_state, make_train_step

B = 8


def tiny_config(loss, **kwargs):
  c = config_lib.base_config()
  c.model.overrides.n_layers = 1
  c.model.overrides.dim = 32
  c.testbed.n_pairs = 32
  c.testbed.group_size = 2
  c.dpo.loss = loss
  c.dpo.batch_size = B
  c.dpo.steps = 2
  c.dpo.lr = 1e-2
  c.dpo.loss_kwargs = dict(beta=0.3)
  for k, v in kwargs.items():
    c.dpo[k] = v
  config_lib.validate(c)
  return c


def preference_data(c, tok, kind: str, n: int):
  """(testbed examples, plain-row encoder) for a loss kind: pairwise, unpaired or multi."""
  wcfg = data_source.world_config(c, "testbed")
  max_len, trunc = c.data.max_len, c.data.truncate
  encode = {"pairwise": lambda: pipeline.encode_pair(tok, max_len, trunc),
            "unpaired": lambda: pipeline.encode_unpaired(tok, max_len, trunc),
            "multi": lambda: pipeline.encode_group(tok, max_len, wcfg.group_size, trunc)}[kind]()
  return data_source.world_examples(wcfg, kind, n, "train"), encode


def build(c):
  tok = TestbedTokenizer()
  model, graphdef, params = build_model(c, tok)
  mesh = sharding.make_mesh(1, 1, 1)
  param_sh = sharding.param_shardings(model, mesh)
  objective = preference_objective(c.dpo)
  examples, encode = preference_data(c, tok, objective.spec.kind, c.testbed.n_pairs)
  batches = pipeline.batched(examples, encode, B, seed=0, num_steps=c.dpo.steps)
  tx, schedule = make_optimizer(c.dpo.lr, c.dpo.steps, warmup_steps=0)
  state, state_sh = init_state(params, tx, param_sh)
  step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                         batch_sharding=sharding.batch_sharding(mesh), ref_shardings=param_sh,
                         donate=False)
  return objective, step, state, params, batches


@pytest.mark.parametrize("loss,extra", [
    ("dpo", {}), ("ipo", {}), ("kto", {}), ("mdpo", {}), ("mipo", {}), ("simpo", {}),
    ("orpo", {}), ("cpo", {}), ("combo", {"loss_weights": {"dpo": 1.0, "simpo": 0.5}}),
])
def test_every_loss_kind_trains_through_the_shared_step(loss, extra):
  c = tiny_config(loss, **extra)
  objective, step, state, params, batches = build(c)
  ref = params if objective.needs_reference else None
  p0 = jax.tree.map(np.asarray, state["params"])
  losses = []
  for i in range(c.dpo.steps):
    state, m = step(state, jax.tree.map(jnp.asarray, batches[i]), ref)
    losses.append(float(m["loss"]))
  assert all(np.isfinite(losses)), losses
  moved = max(float(np.abs(np.asarray(a) - b).max())
              for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(p0)))
  assert moved > 0.0
  # At the first step the policy equals the reference: DPO's loss is exactly log 2.
  if loss == "dpo":
    assert losses[0] == pytest.approx(np.log(2.0), abs=1e-5)


def _count_calls(monkeypatch, loss):
  """Model forward passes made while tracing the step once (policy + reference)."""
  c = tiny_config(loss)
  objective, step, state, params, batches = build(c)
  calls = []
  fwd = objective_lib._FORWARDS[objective.spec.kind]
  monkeypatch.setitem(objective_lib._FORWARDS, objective.spec.kind,
                      lambda model, batch: calls.append(1) or fwd(model, batch))
  ref = params if objective.needs_reference else None
  lowered = step.lower(state, jax.tree.map(jnp.asarray, batches[0]), ref)
  return len(calls), lowered.compile().cost_analysis()


def _flops(cost):
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def test_reference_free_loss_skips_the_reference_forward(monkeypatch):
  n_dpo, cost_dpo = _count_calls(monkeypatch, "dpo")
  n_simpo, cost_simpo = _count_calls(monkeypatch, "simpo")
  assert n_dpo == 2       # policy (under grad) + reference
  assert n_simpo == 1     # policy only
  # Forward ~ F, backward ~ 2F: DPO step ~ 4F, SimPO step ~ 3F -> ratio ~ 3/4.
  ratio = _flops(cost_simpo) / _flops(cost_dpo)
  assert 0.6 < ratio < 0.85, ratio


def test_combination_of_reference_free_parts_needs_no_reference():
  c = tiny_config("combo", loss_weights={"simpo": 1.0, "cpo": 0.5})
  assert not preference_objective(c.dpo).needs_reference
  assert preference_objective(tiny_config("combo", loss_weights={"dpo": 1.0}).dpo).needs_reference


def test_config_errors_name_the_field():
  c = config_lib.base_config()
  c.testbed.start = "nowhere"
  with pytest.raises(config_lib.ConfigError, match="config.testbed.start"):
    config_lib.validate(c)
  c = config_lib.base_config()
  c.testbed.start = "other_tasks"
  with pytest.raises(config_lib.ConfigError, match="config.testbed.sft_tasks"):
    config_lib.validate(c)
  c = config_lib.base_config()
  c.dpo.loss = "combo"
  with pytest.raises(config_lib.ConfigError, match="config.dpo.loss_weights"):
    config_lib.validate(c)
  c.dpo.loss_weights = {"kto": 1.0}
  with pytest.raises(config_lib.ConfigError, match="config.dpo.loss_weights"):
    preference_objective(c.dpo)
