"""LoRA: identity at init, DPO with adapters trains only adapters against a frozen base."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefjax import sharding
from prefjax.data import pipeline
from prefjax.models import forward_logps, lora
from prefjax.testbed import world
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train import config as config_lib
from prefjax.train.data_source import world_config
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.run import run
from prefjax.train.model_source import build_model
from prefjax.train.step import init_state, make_train_step
from flax import nnx


def _setup():
  c = config_lib.base_config()
  c.model.overrides.n_layers = 2
  tok = TestbedTokenizer()
  model, graphdef, params = build_model(c, tok)
  return c, tok, model, graphdef, params


def test_apply_lora_shapes_and_formula():
  _, _, _, _, params = _setup()
  cfg = lora.LoraConfig(rank=4, alpha=8.0)
  lo = lora.init_lora(params, cfg, jax.random.PRNGKey(0))
  lo = jax.tree.map(lambda x: x + 0.01, lo)              # make B non-zero
  full = lora.apply_lora(params, lo, cfg.scale)
  for name, (mod, p, n_in) in lora.TARGETS.items():
    w = np.asarray(params["blocks"][1][mod][p])
    a, b = (np.asarray(lo["blocks"][1][mod][p][k]) for k in "ab")
    want = w + 2.0 * (a.reshape(-1, 4) @ b.reshape(4, -1)).reshape(w.shape)
    np.testing.assert_allclose(np.asarray(full["blocks"][1][mod][p]), want, rtol=1e-5, atol=1e-6)
  assert np.array_equal(full["embed"], params["embed"])


def test_dpo_with_lora_trains_only_adapters_on_one_base_copy():
  c, tok, model, graphdef, base = _setup()
  mesh = sharding.make_mesh(-1, 1, 1)
  param_sh = sharding.param_shardings(model, mesh)
  base = jax.device_put(base, param_sh)
  base_before = jax.tree.map(np.array, base)
  cfg = lora.LoraConfig(rank=4, alpha=8.0)
  lo = lora.init_lora(base, cfg, jax.random.PRNGKey(1))
  compose = lambda l, b: lora.apply_lora(b, l, cfg.scale)
  pairs = world.preference_pairs(world_config(c, "testbed"), 64)
  batches = pipeline.batched(pairs, pipeline.encode_pair(tok, 32, "prompt_left"), 8, seed=0,
                             num_steps=5)
  # At init the policy (base + adapters) equals the base: reference == policy log-probs.
  batch = batches[0]
  pol = forward_logps(nnx.merge(graphdef, compose(lo, base)), batch, "chosen_")
  ref = forward_logps(nnx.merge(graphdef, base), batch, "chosen_")
  np.testing.assert_array_equal(np.asarray(pol[0]), np.asarray(ref[0]))

  tx, schedule = make_optimizer(1e-2, 5, warmup_steps=0)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state, state_sh = init_state(lo, tx, jax.tree.map(lambda _: rep, lo))
  n_base = sum(x.size for x in jax.tree.leaves(base))
  # The optimizer state and the trainable params cover the adapters only.
  assert jax.tree.structure(state["params"]) == jax.tree.structure(lo)
  opt_sizes = {x.size for x in jax.tree.leaves(state["opt_state"])} - {1}
  assert opt_sizes <= {x.size for x in jax.tree.leaves(lo)}
  assert sum(x.size for x in jax.tree.leaves(state)) < n_base / 4
  step = make_train_step(graphdef, make_objective("dpo", {"beta": 0.3}), tx, schedule,
                         state_shardings=state_sh, batch_sharding=sharding.batch_sharding(mesh),
                         ref_shardings=param_sh, compose=compose)
  for i in range(5):
    state, m = step(state, jax.device_put(batches[i], sharding.batch_sharding(mesh)), base)
    if i == 0:   # first step: policy == reference, so the DPO margin is exactly 0
      assert float(m["loss"]) == pytest.approx(np.log(2.0), abs=1e-6)
  jax.tree.map(np.testing.assert_array_equal, base_before, jax.tree.map(np.array, base))
  b_after = state["params"]["blocks"][0]["attn"]["q"]["b"]
  assert float(jnp.abs(b_after).max()) > 0          # the adapters did train


def test_runner_dpo_with_lora(tmp_path):
  c = config_lib.base_config()
  c.model.overrides.n_layers = 1
  c.stages = ("dpo", "eval")
  c.dpo.steps, c.dpo.batch_size = 3, 4
  c.testbed.n_pairs, c.testbed.n_eval_pairs = 32, 8
  c.eval.n_prompts, c.eval.n_samples, c.eval.max_new_tokens = 4, 1, 4
  c.lora.rank = 2
  c.progress, c.tensorboard = False, False
  s = run(c, str(tmp_path))
  assert s["lora/num_params"] > 0 and np.isfinite(s["win_rate"] if "win_rate" in s else 0.0)


@pytest.mark.parametrize("fmt", ["int4"])     # int8 runs the same code (tests/models/test_quant.py)
def test_runner_dpo_with_lora_on_a_quantized_base(tmp_path, fmt):
  c = config_lib.base_config()
  c.model.overrides.n_layers = 1
  c.stages = ("dpo", "eval")
  c.dpo.steps, c.dpo.batch_size = 3, 4
  c.testbed.n_pairs, c.testbed.n_eval_pairs = 32, 8
  c.eval.n_prompts, c.eval.n_samples, c.eval.max_new_tokens = 4, 1, 4
  c.lora.rank, c.lora.quantize, c.lora.quant_block = 2, fmt, 32
  c.progress, c.tensorboard = False, False
  s = run(c, str(tmp_path))
  want = (1 if fmt == "int8" else 0.5) + 4 / 32
  assert s["lora/base_bytes_per_param"] == pytest.approx(want)
  assert s["lora/num_params"] > 0
  # The finished run's reference is the quantized base it trained against; the policy is
  # the merged (dequantized + adapters) float model.
  from prefjax.models import quant
  from prefjax.train.finished_run import load_run
  loaded = load_run(str(tmp_path))
  assert quant.is_quantized(loaded.reference["blocks"][0]["attn"]["q"])
  assert not quant.is_quantized(loaded.policy["blocks"][0]["attn"]["q"])
  assert f"{fmt} base" in loaded.description


@pytest.mark.parametrize("edit,match", [
    (dict(rank=0, quantize="int8"), "needs lora.rank > 0"),
    (dict(rank=2, quantize="nf4"), "unknown format 'nf4'"),
    (dict(rank=2, quantize="int4", quant_block=3), "quant_block"),
    (dict(rank=2, quantize="gguf"), "not a .gguf file"),
])
def test_quantize_config_errors(edit, match):
  from prefjax.errors import ConfigError
  from prefjax.train.stages import Lora
  c = config_lib.base_config()
  c.lora.update(edit)
  with pytest.raises(ConfigError, match=match):
    Lora.from_config(c)


def test_gguf_quantize_needs_lora_only_stages():
  from prefjax.errors import ConfigError
  from prefjax.train.stages import Lora
  c = config_lib.base_config()
  c.lora.rank, c.lora.quantize, c.model.init_from = 2, "gguf", "model.Q8_0.gguf"
  with pytest.raises(ConfigError, match="stage 'sft' cannot"):
    Lora.from_config(c)
  c.stages = ("dpo", "eval")
  assert Lora.from_config(c).quant_bits == 0
