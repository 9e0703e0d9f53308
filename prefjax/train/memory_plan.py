"""Memory of one DPO train step per device, planned before any weight is loaded.

``plan_step`` builds THE train step (``prefjax.train.step.make_train_step``, the DPO
objective, AdamW from ``prefjax.train.optimizer``) for a model config and a mesh, compiles
it on abstract shapes (``jax.ShapeDtypeStruct``: nothing is allocated, no checkpoint is
read) with the project's sharding rules (``prefjax.sharding``), and reads XLA's buffer
assignment (``compiled.memory_analysis()``), which is per device for a sharded step:

  params+optimizer  trainable parameters + optimizer state + frozen weights (the reference
                    model, or LoRA's base, which is also the reference), this device's shard
  temporaries       XLA's scratch buffers of the step (activations kept for the backward
                    pass, gradients, the reference's forward)
  total             arguments + outputs not aliased to a donated argument + temporaries

The batch is ``batch`` pairs at their longest: two ``[max_len]`` rows each (the plain layout,
``prefjax.data.pipeline.encode_pair``), or prompt-shared pairs packed into rows of
``2 * max_len`` tokens (``layout="packed"``, the real-model recipes' default).

What it is not: the compile runs on the host's backend (XLA:CPU with simulated devices when
planning a mesh on a laptop); another backend fuses and schedules differently, so its
temporaries differ (the parameter and optimizer bytes do not). A process also holds the
runtime, the host copy of loaded weights and the data pipeline on top (the benchmark in
BENCHMARKS.md compares a plan with a measured peak RSS).

    plan = plan_step(llama_config("8b", param_dtype="bfloat16"), mesh, batch=8,
                     max_len=2048, opt_state_dtype="bfloat16", remat="block")
    print(plan.summary())

Deep models compile slowly on a CPU (minutes for 32 layers on 8 simulated devices);
``plan_step_by_depth`` compiles two shallow copies (e.g. 2 and 4 layers) and extends every
byte count linearly in depth: parameters, moments and gradients grow exactly by one block's
worth per layer, and so do the activations a block keeps for the backward pass. Measured
against full compiles (bfloat16, batch 8 x 2048, remat "block"): probes at 4 and 8 layers
are within 0.1% (Llama-3.2-1B shapes, 1 device) and 4% (Llama-3.1-8B, fsdp=8) of the total;
probes at 2 and 4 layers are off by up to 19% (too shallow to be linear yet).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from prefjax import sharding
from prefjax.errors import ConfigError
from prefjax.models.config import PRESETS, ModelConfig, make_config

GIB = 1024 ** 3

# Llama 3.x shapes (Hugging Face config.json of meta-llama/Llama-3.2-1B, -3.2-3B, -3.1-8B,
# -3.1-70B): vocabulary 128,256, RoPE base 500,000, Llama 3 rope scaling.
_LLAMA3_ROPE = (("factor", 32.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))
LLAMA3_SHAPES: dict[str, dict[str, Any]] = {
    "1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64, mlp_dim=8192,
               tie_embeddings=True),
    "3b": dict(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, head_dim=128, mlp_dim=8192,
               tie_embeddings=True),
    "8b": dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128, mlp_dim=14336,
               tie_embeddings=False),
    "70b": dict(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, head_dim=128, mlp_dim=28672,
                tie_embeddings=False),
}


def llama_config(size: str, **overrides) -> ModelConfig:
  """A Llama 3.x shape (``LLAMA3_SHAPES``: 1b, 3b, 8b, 70b) with ModelConfig overrides."""
  if size not in LLAMA3_SHAPES:
    raise ConfigError(f"unknown Llama shape {size!r}; known: {', '.join(LLAMA3_SHAPES)}")
  kw = dict(LLAMA3_SHAPES[size], vocab_size=128256, rope_theta=500000.0, norm_eps=1e-5,
            rope_scaling=_LLAMA3_ROPE, max_len=131072)
  kw.update(overrides)
  return ModelConfig(**kw)


def model_config(spec: str, *, vocab_size: int = 256, **overrides) -> ModelConfig:
  """A ModelConfig from a spec, without reading weights.

  ``spec``: ``llama:1b|3b|8b|70b``; a preset name (``prefjax.models.config.PRESETS``, with
  ``vocab_size``); ``smollm2`` (the installed SmolLM2-135M-Instruct GGUF); a ``.gguf``
  file (its metadata); a Hugging Face directory or its ``config.json``.
  """
  if spec.startswith("llama:"):
    return llama_config(spec.split(":", 1)[1], **overrides)
  if spec in PRESETS:
    return make_config(spec, vocab_size=vocab_size, overrides=overrides)
  from prefjax.models.hf_config import config_from_hf
  if spec == "smollm2":
    from prefjax import assets
    spec = assets.smollm2_gguf()
  if spec.endswith(".gguf"):
    from prefjax.models import gguf
    reader = gguf._open(spec)
    arch = str(gguf._field(reader, "general.architecture"))
    names = {t.name for t in reader.tensors}
    return config_from_hf(gguf._hf_config(reader, arch, names, spec), **overrides)
  path = os.path.join(spec, "config.json") if os.path.isdir(spec) else spec
  if not os.path.isfile(path):
    raise ConfigError(f"model spec {spec!r}: not llama:SIZE, a preset "
                      f"({', '.join(sorted(PRESETS))}), smollm2, a .gguf file, a Hugging "
                      "Face directory or a config.json")
  with open(path) as f:
    return config_from_hf(json.load(f), **overrides)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Per-device bytes of one compiled train step (see the module docstring)."""
  trainable: int          # the trained parameters (the model, or LoRA's adapters)
  optimizer: int          # optimizer state
  frozen: int             # reference model / LoRA base weights passed to the step
  batch: int
  arguments: int          # XLA: all inputs (the four above, plus the step counter)
  outputs: int
  aliased: int            # outputs written into donated inputs (the new state)
  temporaries: int
  devices: int
  num_params: int         # of the model (all devices)

  @property
  def params_optimizer(self) -> int:
    return self.trainable + self.optimizer + self.frozen

  @property
  def total(self) -> int:
    return self.arguments + self.outputs - self.aliased + self.temporaries

  def summary(self) -> str:
    g = lambda n: f"{n / GIB:.2f}"
    return (f"per-device: params+optimizer {g(self.params_optimizer)} GiB, "
            f"temporaries {g(self.temporaries)} GiB, total {g(self.total)} GiB")

  def breakdown(self) -> str:
    g = lambda n: f"{n / GIB:.3f}"
    return (f"per device ({self.devices} devices, {self.num_params / 1e9:.3f}B params): "
            f"trainable {g(self.trainable)} GiB, optimizer {g(self.optimizer)} GiB, frozen "
            f"{g(self.frozen)} GiB, batch {g(self.batch)} GiB, temporaries "
            f"{g(self.temporaries)} GiB, outputs not aliased "
            f"{g(self.outputs - self.aliased)} GiB")


def per_device_bytes(tree, shardings) -> int:
  """Bytes of this device's shard of every array (shape/dtype structs) in ``tree``."""
  total = 0
  for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shape = s.shard_shape(x.shape) if hasattr(s, "shard_shape") else x.shape
    total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(x.dtype).itemsize
  return total


def abstract_model(cfg: ModelConfig):
  """(graphdef, abstract params, the abstract module): shapes only."""
  from prefjax.models.transformer import Transformer
  model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        nnx.to_pure_dict(state))
  return graphdef, params, model


def pair_batch(batch: int, max_len: int, reference_cache: bool = False,
               layout: str = "plain") -> dict:
  """Abstract pairwise batch of ``batch`` pairs.

  "plain" (``pipeline.encode_pair``): chosen_* and rejected_* rows [B, max_len] int32.
  "packed" (``prefjax.data.layout``, the real-model recipes' default): prompt-shared pairs
  in ceil(B / 2) rows of 2 * max_len tokens, the layout's default rows and row length.
  """
  vec = jax.ShapeDtypeStruct((batch,), jnp.float32)
  if layout == "packed":
    from prefjax.data.layout import ROW_FIELDS as PACKED_FIELDS
    row = jax.ShapeDtypeStruct((-(-batch // 2), 2 * max_len), jnp.int32)
    out = {f"rows_{k}": row for k in PACKED_FIELDS}
    out.update(slot_source=jax.ShapeDtypeStruct((batch, 2), jnp.int32), truncated=vec,
               example_mask=vec, alpha=vec)
  elif layout == "plain":
    from prefjax.data.collate import ROW_FIELDS
    row = jax.ShapeDtypeStruct((batch, max_len), jnp.int32)
    out = {f"{side}_{k}": row for side in ("chosen", "rejected") for k in ROW_FIELDS}
    out.update(truncated=vec, completion_truncated=vec, example_mask=vec, alpha=vec)
  else:
    raise ConfigError(f"layout must be 'plain' or 'packed', got {layout!r}")
  if reference_cache:          # cached reference log-probs travel as batch fields
    out.update(ref_chosen_logps=vec, ref_rejected_logps=vec)
  return out


def plan_step(cfg: ModelConfig, mesh, *, batch: int, max_len: int, lora_rank: int = 0,
              quant: str = "", quant_block: int = 64, opt_state_dtype: str | None = None,
              reference: str = "model",
              logps_chunk: int | None = None, loss: str = "dpo", layout: str = "plain",
              compile: bool = True, return_compiled=False):
  """Compiles the DPO train step on abstract shapes over ``mesh``; returns a ``Plan``.

  Args:
    cfg: the model (``dtype``, ``param_dtype``, ``remat`` ... as the run would set them).
    mesh: a ``prefjax.sharding.make_mesh`` mesh (simulated CPU devices are fine).
    batch: pairs per step (global; split over the mesh's data and fsdp axes).
    max_len: tokens per row.
    lora_rank: > 0 trains LoRA adapters of that rank on every projection; the frozen base
      is also the reference (as ``config.lora.rank``).
    quant: with ``lora_rank``, "int8" or "int4" holds that frozen base quantized in blocks of
      ``quant_block`` (``config.lora.quantize``, prefjax/models/quant.py); "" keeps it as is.
    opt_state_dtype: Adam moments' dtype (``make_optimizer``); None = float32.
    reference: "model" (the step runs the reference model: full fine-tuning holds a second
      copy of the weights) or "cache" (reference log-probs come with the batch).
    logps_chunk: tokens per chunk of the vocabulary log-softmax (None: full logits).
    layout: "plain" or "packed" rows (``pair_batch``).
    compile: False skips XLA: only the parameter, optimizer and batch bytes (a lower bound;
      temporaries and outputs 0).
  Returns:
    ``Plan`` (and the compiled step with ``return_compiled=True``).
  """
  from prefjax.models import lora as lora_lib
  from prefjax.models import quant as quant_lib
  from prefjax.train.objective import make_objective
  from prefjax.train.optimizer import make_optimizer
  from prefjax.train.step import make_train_step, opt_state_shardings
  if reference not in ("model", "cache"):
    raise ConfigError(f"reference must be 'model' or 'cache', got {reference!r}")
  if quant and quant not in quant_lib.FORMATS:
    raise ConfigError(f"quant must be one of {', '.join(quant_lib.FORMATS)} or '', got {quant!r}")
  if quant and not lora_rank:
    raise ConfigError(f"quant={quant!r} quantizes LoRA's frozen base: it needs lora_rank > 0")
  if cfg.max_len < max_len:
    cfg = cfg.replace(max_len=max_len)
  graphdef, params, model = abstract_model(cfg)
  param_sh = sharding.param_shardings(model, mesh)
  rep = NamedSharding(mesh, P())
  objective = make_objective(loss, {"beta": 0.1}, logps_chunk=logps_chunk)
  tx, schedule = make_optimizer(1e-6, 100, warmup_steps=1, opt_state_dtype=opt_state_dtype)
  compose = None
  if lora_rank:
    lcfg = lora_lib.LoraConfig(rank=lora_rank)
    trainable = jax.eval_shape(lambda p: lora_lib.init_lora(p, lcfg, jax.random.PRNGKey(0)),
                               params)
    trainable_sh = jax.tree.map(lambda _: rep, trainable)     # as the LoRA stage places them
    compose = lambda adapters, base: lora_lib.apply_lora(base, adapters, lcfg.scale)
    frozen, frozen_sh = params, param_sh
    if quant:
      frozen = jax.eval_shape(lambda p: quant_lib.quantize_params(
          p, bits=quant_lib.FORMATS[quant], block=quant_block), params)
      frozen_sh = quant_lib.quantized_shardings(frozen, param_sh)
  else:
    trainable, trainable_sh = params, param_sh
    use_ref = reference == "model" and objective.needs_reference
    frozen, frozen_sh = (params, param_sh) if use_ref else (None, None)
  opt_state = jax.eval_shape(tx.init, trainable)
  opt_sh = opt_state_shardings(tx, trainable, trainable_sh)       # as init_state places it
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": trainable,
           "opt_state": opt_state}
  state_sh = {"step": rep, "params": trainable_sh, "opt_state": opt_sh}
  batch_sh = sharding.batch_sharding(mesh)
  n_batch = int(np.prod([mesh.shape[a] for a in batch_sh.spec[0]])) if batch_sh.spec[0] else 1
  if batch % n_batch:
    raise ConfigError(f"batch={batch} pairs do not split over the {n_batch} data x fsdp "
                      f"devices of the mesh; use a multiple of {n_batch}")
  abstract_batch = pair_batch(batch, max_len, reference_cache=(
      reference == "cache" and objective.needs_reference and not lora_rank), layout=layout)
  sizes = dict(
      trainable=per_device_bytes(trainable, trainable_sh),
      optimizer=per_device_bytes(opt_state, opt_sh),
      frozen=per_device_bytes(frozen, frozen_sh) if frozen is not None else 0,
      batch=per_device_bytes(abstract_batch, jax.tree.map(lambda _: batch_sh, abstract_batch)),
      devices=mesh.size, num_params=cfg.num_params())
  if not compile:
    return Plan(**sizes, arguments=sum(sizes[k] for k in ("trainable", "optimizer", "frozen",
                                                          "batch")),
                outputs=0, aliased=0, temporaries=0)
  step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                         batch_sharding=batch_sh, ref_shardings=frozen_sh, compose=compose)
  compiled = step.lower(state, abstract_batch, frozen).compile()
  stats = compiled.memory_analysis()
  if stats is None:
    raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis")
  plan = Plan(**sizes, arguments=int(stats.argument_size_in_bytes),
              outputs=int(stats.output_size_in_bytes), aliased=int(stats.alias_size_in_bytes),
              temporaries=int(stats.temp_size_in_bytes))
  return (plan, compiled) if return_compiled else plan


def extrapolate(a: Plan, b: Plan, layers_a: int, layers_b: int, layers: int,
                num_params: int) -> Plan:
  """The plan at ``layers`` from plans at two depths, each byte count linear in depth."""
  def line(name):
    x, y = getattr(a, name), getattr(b, name)
    return int(round(x + (y - x) * (layers - layers_a) / (layers_b - layers_a)))
  fields = [f.name for f in dataclasses.fields(Plan) if f.name not in ("devices", "num_params")]
  return Plan(**{n: line(n) for n in fields}, devices=a.devices, num_params=num_params)


def plan_step_by_depth(cfg: ModelConfig, mesh, *, probe_layers=(2, 4), **kw) -> Plan:
  """``plan_step`` of ``cfg`` from compiles at the two depths ``probe_layers`` (see the module
  docstring); the full compile when the model is not deeper than the larger probe."""
  lo, hi = sorted(probe_layers)
  if cfg.n_layers <= hi or cfg.layer_types is not None or not kw.get("compile", True):
    return plan_step(cfg, mesh, **kw)          # mixed layer types: no single block to repeat
  a = plan_step(cfg.replace(n_layers=lo), mesh, **kw)
  b = plan_step(cfg.replace(n_layers=hi), mesh, **kw)
  return extrapolate(a, b, lo, hi, cfg.n_layers, cfg.num_params())
