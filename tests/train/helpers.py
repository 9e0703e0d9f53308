"""A tiny end-to-end setup (testbed data, tiny model, one device) shared by train tests."""
import jax
import jax.numpy as jnp
from flax import nnx

from prefjax import sharding
from prefjax.data import layout as layout_lib
from prefjax.data import pipeline
from prefjax.models import Transformer, make_config
from prefjax.testbed import world
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state, make_train_step

TOK = TestbedTokenizer()


def tiny_lm(seed=0):
  cfg = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
      dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32))
  model = Transformer(cfg, nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)


def setup(loss="dpo", hparams=None, *, mesh=None, batch_size=8, steps=20, lr=1e-3, seed=0,
          layout="plain", logps_chunk=None):
  """Returns (step_fn, state, ref_params, batches, batch_sharding).

  ``layout="packed"`` (preference losses): prefix-shared pairs packed into ceil(batch_size / 2)
  rows of 64 tokens (one shape, no buckets); ``logps_chunk``: chunked vocabulary log-probs.
  """
  mesh = mesh or sharding.make_mesh(devices=jax.devices()[:1])
  model, graphdef, params = tiny_lm(seed)
  param_sh = sharding.param_shardings(model, mesh)
  objective = make_objective(loss, hparams or ({"beta": 0.1} if loss != "sft" else {}),
                             logps_chunk=logps_chunk)
  tx, schedule = make_optimizer(lr, steps, warmup_steps=2)
  state, state_sh = init_state(jax.tree.map(jnp.copy, params), tx, param_sh)
  wcfg = world.WorldConfig(tasks=("sort",))
  if objective.spec.kind == "sft":
    ex, enc = world.sft_examples(wcfg, 256), pipeline.encode_sft(TOK, 32)
  else:
    ex, enc = world.preference_pairs(wcfg, 256), pipeline.encode_pair(TOK, 32)
  if layout != "plain":
    enc = layout_lib.make_encoder("pairwise", TOK, 32, layout=layout, batch_size=batch_size)
    batches = layout_lib.plan_batches(ex, enc, seed=seed, num_steps=steps)
  else:
    batches = pipeline.batched(ex, enc, batch_size, seed=seed, num_steps=steps)
  batch_sh = sharding.batch_sharding(mesh)
  step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                         batch_sharding=batch_sh, ref_shardings=param_sh)
  ref = jax.device_put(params, param_sh) if objective.needs_reference else None
  return step, state, ref, batches, batch_sh
