"""Plans the per-device memory of a DPO train step without loading weights.

  python scripts/memory_plan.py --model=llama:8b --mesh=fsdp=8 --batch=8 --max_len=2048 \
      --dtype=bfloat16 --opt_state_dtype=bfloat16 --remat=block --logps_chunk=128 \
      --attention_kernel=blockwise --probe_layers=4,8
  python scripts/memory_plan.py --model=smollm2 --batch=4 --max_len=256 --reference=cache
  python scripts/memory_plan.py --model=/path/to/hf_dir --mesh=data=2,fsdp=4 --lora=16 ...
  python scripts/memory_plan.py --model=llama:1b --lora=16 --quant=int8 --remat=block ...

Compiles the real step (prefjax/train/step.py, the DPO objective, AdamW) on abstract shapes
over a mesh of simulated CPU devices with the project's sharding rules, and prints XLA's
per-device buffer assignment (prefjax/train/memory_plan.py), ending with

  per-device: params+optimizer X GiB, temporaries Y GiB, total Z GiB

--model: llama:1b|3b|8b|70b (Llama 3.x shapes), a preset name, smollm2, a .gguf file, a
Hugging Face directory or config.json. --dtype sets both the parameter and the compute dtype.

--table plans a grid instead (the "Memory: what fits" table of BENCHMARKS.md): every model of
--table_models, each method of --table_methods (full fine-tuning; LoRA rank 16 on a float,
int8 or int4 base), on fsdp meshes of --table_meshes devices,
with the other flags as given; a mesh of more devices than --batch pairs takes one pair per
device. A cell whose parameters and optimizer state alone exceed the largest device is not
compiled.
"""
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard

_MODEL = flags.DEFINE_string("model", "llama:1b", "Model spec (see the module docstring).")
_MESH = flags.DEFINE_string("mesh", "data=1,fsdp=1,tensor=1",
                            "Mesh axes: data=D,fsdp=F,tensor=T (missing axes are 1).")
_BATCH = flags.DEFINE_integer("batch", 8, "Pairs per step (global).")
_MAX_LEN = flags.DEFINE_integer("max_len", 2048, "Tokens per row.")
_LORA = flags.DEFINE_integer("lora", 0, "LoRA rank (0: full fine-tuning).")
_QUANT = flags.DEFINE_enum("quant", "", ["", "int8", "int4"],
                           "With --lora: the frozen base quantized (config.lora.quantize).")
_QUANT_BLOCK = flags.DEFINE_integer("quant_block", 64, "Values per quantisation block.")
_TABLE_METHODS = flags.DEFINE_string(
    "table_methods", "full,lora,qlora_int8,qlora_int4",
    "Methods of --table (rows per model): names of METHODS.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Parameter and compute dtype.")
_OPT = flags.DEFINE_string("opt_state_dtype", "float32", "Adam moments' dtype.")
_REMAT = flags.DEFINE_enum("remat", "none", ["none", "block", "save_matmuls"],
                           "ModelConfig.remat (block: recompute each block in the backward).")
_CHUNK = flags.DEFINE_integer("logps_chunk", 0,
                              "Tokens per chunk of the vocabulary log-softmax (0: full logits).")
_REF = flags.DEFINE_enum("reference", "model", ["model", "cache"],
                         "The reference: run in the step (model) or cached log-probs (cache).")
_ATTN = flags.DEFINE_enum("attention_kernel", None, ["dense", "blockwise", "cudnn", "xla"],
                          "ModelConfig.attention_kernel (default: chosen for the backend).")
_TABLE = flags.DEFINE_bool("table", False, "Plan the grid of --table_models x meshes.")
_TABLE_MODELS = flags.DEFINE_string("table_models", "llama:1b,llama:8b,llama:70b",
                                    "Models of --table.")
_TABLE_MESHES = flags.DEFINE_string("table_meshes", "1,8,64", "fsdp mesh sizes of --table.")
_LAYOUT = flags.DEFINE_enum("layout", "plain", ["plain", "packed"],
                            "Row layout: one row per response, or prompt-shared pairs packed "
                            "into rows of 2 * max_len tokens.")
_VOCAB = flags.DEFINE_integer("vocab_size", 256, "Vocabulary of a preset model.")
_PROBE = flags.DEFINE_string(
    "probe_layers", "", "Two depths, e.g. 2,4: compile those and extend linearly to the "
    "model's depth (fast for deep models); empty: compile the full model.")


def parse_mesh(text: str) -> dict:
  axes = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in [p for p in text.split(",") if p]:
    name, _, value = part.partition("=")
    if name not in axes or not value.isdigit() or int(value) < 1:
      raise app.UsageError(f"--mesh: expected data=D,fsdp=F,tensor=T, got {part!r}")
    axes[name] = int(value)
  return axes


# --table methods: name -> (row label, LoRA rank, quantized base format).
METHODS = {"full": ("full", 0, ""), "lora": ("LoRA r=16", 16, ""),
           "qlora_int8": ("LoRA r=16, int8 base", 16, "int8"),
           "qlora_int4": ("LoRA r=16, int4 base", 16, "int4")}


# Memory one process can use, GiB: an 80 GB H100 (81,559 MiB as nvidia-smi reports it) and a
# TPU v5e chip (16 GiB of HBM, of which the runtime leaves about 15.75 GiB).
DEVICES = (("H100 80 GB", 79.6), ("TPU v5e 16 GB", 15.75))


def main(argv):
  del argv
  axes = parse_mesh(_MESH.value)
  n = axes["data"] * axes["fsdp"] * axes["tensor"]
  if _TABLE.value:
    n = max(int(x) for x in _TABLE_MESHES.value.split(","))
  # Simulated devices and XLA:CPU's memory scheduler are read when the backend starts: set
  # both before the first JAX computation.
  flags_env = os.environ.get("XLA_FLAGS", "")
  if n > 1 and "xla_force_host_platform_device_count" not in flags_env:
    os.environ["XLA_FLAGS"] = f"{flags_env} --xla_force_host_platform_device_count={n}".strip()
  from prefjax import xla_cpu
  if _REMAT.value != "none":
    xla_cpu.prefer_memory_scheduler()
  import jax
  from prefjax import sharding
  from prefjax.train import memory_plan
  if jax.default_backend() == "cpu" and len(jax.devices()) < n:
    raise app.UsageError(f"the mesh needs {n} devices; this process has {len(jax.devices())} "
                         "(XLA_FLAGS already sets another device count)")
  if _TABLE.value:
    table(jax, sharding, memory_plan)
    return
  cfg = memory_plan.model_config(_MODEL.value, vocab_size=_VOCAB.value, dtype=_DTYPE.value,
                                 param_dtype=_DTYPE.value, remat=_REMAT.value,
                                 attention_kernel=_ATTN.value)
  mesh = sharding.make_mesh(axes["data"], axes["fsdp"], axes["tensor"],
                            devices=jax.devices()[:n])
  t0 = time.perf_counter()
  kw = dict(batch=_BATCH.value, max_len=_MAX_LEN.value, lora_rank=_LORA.value,
            quant=_QUANT.value, quant_block=_QUANT_BLOCK.value, opt_state_dtype=_OPT.value,
            reference=_REF.value, logps_chunk=_CHUNK.value or None,
            layout=_LAYOUT.value)
  if _PROBE.value:
    probe = tuple(int(x) for x in _PROBE.value.split(","))
    plan = memory_plan.plan_step_by_depth(cfg, mesh, probe_layers=probe, **kw)
  else:
    plan = memory_plan.plan_step(cfg, mesh, **kw)
  print(f"model {_MODEL.value} ({cfg.num_params() / 1e9:.3f}B params, {_DTYPE.value}), mesh "
        f"{dict(mesh.shape)}, batch {_BATCH.value} pairs x {_MAX_LEN.value} tokens, "
        f"{'LoRA r=%d' % _LORA.value if _LORA.value else 'full'}"
        f"{', %s base (block %d)' % (_QUANT.value, _QUANT_BLOCK.value) if _QUANT.value else ''}"
        f", moments {_OPT.value}, "
        f"remat {_REMAT.value}, logps_chunk {_CHUNK.value}, reference {_REF.value}, "
        f"attention {_ATTN.value or 'default'}, layout {_LAYOUT.value}; "
        f"compiled on {jax.default_backend()} in {time.perf_counter() - t0:.0f} s"
        + (f" at {_PROBE.value} layers, extended to {cfg.n_layers}" if _PROBE.value else ""))
  print(plan.breakdown())
  print(plan.summary())


def _plan(memory_plan, cfg, mesh, **kw):
  if _PROBE.value:
    probe = tuple(int(x) for x in _PROBE.value.split(","))
    return memory_plan.plan_step_by_depth(cfg, mesh, probe_layers=probe, **kw)
  return memory_plan.plan_step(cfg, mesh, **kw)


def table(jax, sharding, memory_plan):
  """Markdown rows: model, method, then per mesh the per-device total and what it fits."""
  meshes = [int(x) for x in _TABLE_MESHES.value.split(",")]
  largest = max(c for _, c in DEVICES)
  print(f"| model | method | " + " | ".join(f"{m} device{'s' * (m > 1)}" for m in meshes) + " |")
  print("|---|---|" + "---|" * len(meshes))
  methods = _TABLE_METHODS.value.split(",")
  bad = [m for m in methods if m not in METHODS]
  if bad:
    raise app.UsageError(f"--table_methods: unknown {bad[0]!r}; known: {', '.join(METHODS)}")
  for spec in _TABLE_MODELS.value.split(","):
    cfg = memory_plan.model_config(spec, dtype=_DTYPE.value, param_dtype=_DTYPE.value,
                                   remat=_REMAT.value, attention_kernel=_ATTN.value)
    for name in methods:
      label, lora, quant = METHODS[name]
      cells = []
      for m in meshes:
        mesh = sharding.make_mesh(1, m, 1, devices=jax.devices()[:m])
        kw = dict(batch=max(_BATCH.value, m), max_len=_MAX_LEN.value, lora_rank=lora,
                  quant=quant, quant_block=_QUANT_BLOCK.value, opt_state_dtype=_OPT.value,
                  reference=_REF.value,
                  logps_chunk=_CHUNK.value or None, layout=_LAYOUT.value)
        t0 = time.perf_counter()
        bound = memory_plan.plan_step(cfg, mesh, compile=False, **kw)
        if bound.params_optimizer / memory_plan.GIB > largest:
          cells.append(f"> {bound.params_optimizer / memory_plan.GIB:.0f} GiB (weights and "
                       "optimizer alone): no / no")
          continue
        plan = _plan(memory_plan, cfg, mesh, **kw)
        total = plan.total / memory_plan.GIB
        fits = " / ".join("yes" if total <= c else "no" for _, c in DEVICES)
        cells.append(f"{total:.1f} GiB ({plan.params_optimizer / memory_plan.GIB:.1f} + "
                     f"{plan.temporaries / memory_plan.GIB:.1f}): {fits}")
        print(f"  [{spec} {label} {m} devices: {plan.summary()}; "
              f"{time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
      print(f"| {spec} | {label} | " + " | ".join(cells) + " |", flush=True)
  print(f"cells: per-device total (weights and optimizer state + temporaries), then fits "
        f"{' / '.join(name for name, _ in DEVICES)} (<= {' / '.join(str(c) for _, c in DEVICES)}"
        f" GiB)")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
