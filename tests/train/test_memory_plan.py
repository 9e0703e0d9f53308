"""The memory planner: exact parameter and optimizer bytes, the same buffers as the real step,
and per-device bytes that shrink with fsdp (8 simulated devices, in a subprocess)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prefjax import sharding
from prefjax.models import Transformer
from prefjax.models.lora import LoraConfig, init_lora, num_lora_params
from prefjax.train import memory_plan
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state, make_train_step

SMALL = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=128, max_len=64)
# Scalars besides the per-parameter bytes: Adam's step count and the schedule's count (int32).
COUNTERS = 8
# Stated tolerance of the planned total against the compiled real step: 1% (it is the same
# program; measured equal to the byte).
TOTAL_RTOL = 0.01


def _cfg(**kw):
  return memory_plan.model_config("testbed-tiny", vocab_size=256, **dict(SMALL, **kw))


def _mesh1():
  return sharding.make_mesh(devices=jax.devices()[:1])


@pytest.mark.parametrize("opt_dtype,bytes_per_param", [(None, 4 + 8 + 4), ("bfloat16", 4 + 4 + 4)])
def test_params_and_optimizer_bytes_are_the_analytic_count(opt_dtype, bytes_per_param):
  # Full fine-tuning with the reference model in the step: float32 parameters (4 B), Adam's
  # two moments (8 B float32, 4 B bfloat16) and the reference's copy (4 B) per parameter.
  cfg = _cfg()
  n = cfg.num_params()
  plan = memory_plan.plan_step(cfg, _mesh1(), batch=4, max_len=32, opt_state_dtype=opt_dtype)
  assert plan.num_params == n
  assert plan.params_optimizer == n * bytes_per_param + COUNTERS, (plan, n)
  assert plan.trainable == 4 * n and plan.frozen == 4 * n
  # the compiled step's arguments are these plus the batch, give or take scalars (the step
  # counter; jit drops the batch fields no loss reads, e.g. ``alpha``)
  assert abs(plan.arguments - (plan.params_optimizer + plan.batch)) <= 64
  assert plan.batch == 4 * (2 * 5 * 32 + 4) * 4      # 10 int32 rows + 4 float32 per pair
  assert "per-device: params+optimizer" in plan.summary()


def test_lora_and_reference_cache_bytes():
  cfg = _cfg()
  n = cfg.num_params()
  _, params, _ = memory_plan.abstract_model(cfg)
  adapters = num_lora_params(jax.eval_shape(
      lambda p: init_lora(p, LoraConfig(rank=4), jax.random.PRNGKey(0)), params))
  plan = memory_plan.plan_step(cfg, _mesh1(), batch=4, max_len=32, lora_rank=4)
  # adapters: float32 weights + float32 moments; the frozen base (also the reference): 4 B
  assert plan.params_optimizer == adapters * 12 + n * 4 + COUNTERS
  cached = memory_plan.plan_step(cfg, _mesh1(), batch=4, max_len=32, reference="cache")
  assert cached.frozen == 0 and cached.params_optimizer == n * 12 + COUNTERS


@pytest.mark.parametrize("quant,bytes_per_weight", [("int8", 1 + 4 / 64), ("int4", 0.5 + 4 / 64)])
def test_quantized_lora_base_bytes(quant, bytes_per_weight):
  # The seven projections of every block quantized in blocks of 64 (values + a float32 scale
  # per block), everything else float32; adapters and their moments as with a float base.
  cfg = _cfg(remat="block")
  n = cfg.num_params()
  _, params, _ = memory_plan.abstract_model(cfg)
  from prefjax.models.lora import TARGETS
  proj = sum(int(np.prod(b[m][k].shape)) for b in params["blocks"].values()
             for m, k, _ in TARGETS.values())
  adapters = num_lora_params(jax.eval_shape(
      lambda p: init_lora(p, LoraConfig(rank=4), jax.random.PRNGKey(0)), params))
  plan = memory_plan.plan_step(cfg, _mesh1(), batch=4, max_len=32, lora_rank=4, quant=quant)
  assert plan.frozen == round(proj * bytes_per_weight) + (n - proj) * 4
  assert plan.params_optimizer == adapters * 12 + plan.frozen + COUNTERS
  assert plan.temporaries > 0
  from prefjax.errors import ConfigError
  with pytest.raises(ConfigError, match="needs lora_rank"):
    memory_plan.plan_step(cfg, _mesh1(), batch=4, max_len=32, quant=quant)


def test_planned_total_equals_the_real_step_compiled_with_weights():
  # The planner compiles on shapes; here the same step is built the way a run builds it
  # (init_state on real arrays) and compiled for a real batch.
  cfg = _cfg()
  batch, max_len = 4, 32
  plan = memory_plan.plan_step(cfg, _mesh1(), batch=batch, max_len=max_len)
  mesh = _mesh1()
  model = Transformer(cfg, nnx.Rngs(0))
  graphdef, st = nnx.split(model)
  params = nnx.to_pure_dict(st)
  param_sh = sharding.param_shardings(model, mesh)
  tx, schedule = make_optimizer(1e-3, 10)
  state, state_sh = init_state(jax.tree.map(jnp.copy, params), tx, param_sh)
  step = make_train_step(graphdef, make_objective("dpo", {"beta": 0.1}), tx, schedule,
                         state_shardings=state_sh, batch_sharding=sharding.batch_sharding(mesh),
                         ref_shardings=param_sh)
  real_batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                            memory_plan.pair_batch(batch, max_len))
  stats = step.lower(state, real_batch, params).compile().memory_analysis()
  real_total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
  print(f"planned {plan.total} B, real step {real_total} B")
  assert abs(plan.total - real_total) <= TOTAL_RTOL * real_total
  assert plan.temporaries > 0 and plan.total > plan.params_optimizer


def test_model_specs():
  assert memory_plan.model_config("llama:8b").num_params() == 8_030_261_248
  assert memory_plan.model_config("llama:70b").num_params() == 70_553_706_496
  assert memory_plan.model_config("llama:1b").num_params() == 1_235_814_400
  hf = {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "max_position_embeddings": 128}
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    with open(os.path.join(d, "config.json"), "w") as f:
      json.dump(hf, f)
    for spec in (d, os.path.join(d, "config.json")):
      cfg = memory_plan.model_config(spec)
      assert (cfg.dim, cfg.n_layers, cfg.vocab_size) == (32, 2, 100)
  from prefjax.errors import ConfigError
  with pytest.raises(ConfigError, match="Llama shape"):
    memory_plan.model_config("llama:13b")
  with pytest.raises(ConfigError, match="reference"):
    memory_plan.plan_step(_cfg(), _mesh1(), batch=4, max_len=32, reference="elsewhere")


_FSDP_PROBE = r"""
import json, sys
import jax
sys.path.insert(0, sys.argv[1])
from prefjax import sharding
from prefjax.train import memory_plan
from prefjax.models import Transformer
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state
from flax import nnx
cfg = memory_plan.model_config("testbed-small", vocab_size=256)
out = {"devices": len(jax.devices())}
for name, mesh in [("fsdp1", sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])),
                   ("fsdp8", sharding.make_mesh(1, 8, 1))]:
  plan = memory_plan.plan_step(cfg, mesh, batch=8, max_len=64)
  out[name] = dict(params_optimizer=plan.params_optimizer, temporaries=plan.temporaries,
                   total=plan.total)
# the real init_state places Adam's moments like the parameters
mesh = sharding.make_mesh(1, 8, 1)
model = Transformer(cfg, nnx.Rngs(0))
tx, _ = make_optimizer(1e-3, 10)
state, _ = init_state(nnx.to_pure_dict(nnx.state(model)), tx,
                      sharding.param_shardings(model, mesh))
mu = state["opt_state"][1][0].mu["blocks"][0]["mlp"]["up"]
out["mu_spec"] = str(mu.sharding.spec)
out["param_spec"] = str(state["params"]["blocks"][0]["mlp"]["up"].sharding.spec)
print(json.dumps(out))
"""


def test_fsdp8_holds_an_eighth_of_the_state_per_device():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", _FSDP_PROBE, root], env=env, capture_output=True,
                       text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.strip().splitlines()[-1])
  print(out)
  assert out["devices"] == 8
  one, eight = out["fsdp1"], out["fsdp8"]
  # 1/8 of every sharded weight and moment; norms and counters stay replicated
  assert eight["params_optimizer"] <= one["params_optimizer"] / 6, out
  assert out["mu_spec"] == out["param_spec"] != "PartitionSpec()", out
  # activations are split over the batch too (one pair per device instead of eight)
  assert eight["temporaries"] < one["temporaries"] / 2, out


def test_packed_layout_plans_the_recipes_rows():
  # 4 pairs packed into 2 rows of 64 tokens: 7 int32 fields per row token, 2 slots and 3
  # float32 fields per pair, 2 cached reference log-probs per pair
  plan = memory_plan.plan_step(_cfg(), _mesh1(), batch=4, max_len=32, layout="packed",
                               reference="cache", logps_chunk=16)
  assert plan.batch == 2 * 64 * 7 * 4 + 4 * (2 * 4 + 3 * 4 + 2 * 4)
  assert plan.temporaries > 0
