"""The model source of a run: ``config.model.init_from`` -> weights + tokenizer.

  init_from = ""                 a fresh model of ``config.model.preset`` (the testbed default)
  init_from = "testbed-small"    the same, naming the preset directly
  init_from = PATH               a Hugging Face directory, a ``*.gguf`` file, a prefjax
                                 checkpoint (``model_config.json``) or a finished prefjax
                                 workdir (its ``model/`` checkpoint)

A loaded model brings its tokenizer (chat template included). A preset has none of its own:
it uses the testbed tokenizer on testbed data and the byte-level tokenizer on files.
``config.model.dtype`` ("float32" | "bfloat16", "" = as stored) sets the compute dtype;
parameters and optimizer state stay float32. ``config.model.overrides`` sets other
``ModelConfig`` fields; for a loaded model only fields that keep every parameter's shape
(dtype, remat, scan_layers, max_len, ...) may change.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
from flax import nnx

from prefjax import sharding
from prefjax.errors import ConfigError, DataError
from prefjax.models import PRESETS, Transformer, make_config
from prefjax.models.config import ModelConfig
from prefjax.models.hf_weights import abstract_params
from prefjax.models.loading import load_model
from prefjax.train.data_source import TESTBED_REWARD_DATA, default_tokenizer
from prefjax.train.outputs import final_model_dir


@dataclasses.dataclass
class ModelSource:
  """A run's starting model. ``params`` is a pure dict placed on ``param_shardings``."""
  cfg: ModelConfig
  graphdef: Any
  params: dict
  param_shardings: Any
  tokenizer: Any
  source: str            # "preset:NAME" or the path it was loaded from
  loaded: bool           # False for a fresh preset

  @property
  def num_params(self) -> int:
    # a quantized weight (lora.quantize="gguf") counts as the parameters it stands for
    leaves = jax.tree.leaves(self.params, is_leaf=lambda x: hasattr(x, "materialize"))
    return int(sum(math.prod(x.shape) for x in leaves))


def build_model(c, tokenizer):
  """(model, graphdef, pure params) of a fresh ``config.model.preset`` model."""
  mcfg = make_config(c.model.preset, vocab_size=tokenizer.vocab_size,
                     overrides=c.model.overrides.to_dict())
  model = Transformer(mcfg, nnx.Rngs(c.seed))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)


def preset_tokenizer(c):
  """The tokenizer of a preset model: the one that reads the run's data, or a reward-only
  run's file."""
  spec = c.data.get("train", "testbed")
  reward_data = c.reward.get("data", "") if "reward" in c else ""
  if (set(c.stages) <= {"reward", "eval_reward"} and reward_data
      and reward_data not in TESTBED_REWARD_DATA):
    spec = reward_data
  return default_tokenizer(spec)


def is_preset(init_from: str) -> bool:
  return not init_from or init_from in PRESETS


def resolve_path(init_from: str) -> str:
  """A finished workdir resolves to its final model (``model/``, else ``export/hf/``); other
  paths are kept."""
  path = os.path.expanduser(init_from)
  final = final_model_dir(path) if os.path.isdir(path) else None
  if final is not None:
    return final
  if not os.path.exists(path):
    raise DataError(f"config.model.init_from: no such file or directory {init_from!r} "
                    f"(expected a preset ({', '.join(sorted(PRESETS))}), a Hugging Face "
                    "directory, a .gguf file, a prefjax checkpoint or a prefjax workdir)")
  return path


def _overrides(c) -> dict:
  over = dict(c.model.overrides.to_dict())
  if c.model.get("dtype"):
    over["dtype"] = c.model.dtype
  return over


def _shapes(cfg):
  model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
  return jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(nnx.state(model)))


def _apply_overrides(cfg: ModelConfig, over: dict, where: str) -> ModelConfig:
  if not over:
    return cfg
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  bad = sorted(set(over) - fields)
  if bad:
    raise ConfigError(f"config.model.overrides: unknown ModelConfig field(s) {', '.join(bad)}; "
                      f"valid: {', '.join(sorted(fields))}")
  new = cfg.replace(**over)
  if _shapes(new) != _shapes(cfg):
    raise ConfigError(f"config.model.overrides {sorted(over)} change parameter shapes of the "
                      f"model loaded from {where}; only shape-preserving fields may change")
  return new


def load(c, mesh) -> ModelSource:
  """The starting model of ``config.model`` sharded over ``mesh``."""
  init_from = c.model.init_from or ""
  if is_preset(init_from):
    preset = init_from or c.model.preset
    tok = preset_tokenizer(c)
    mcfg = make_config(preset, vocab_size=tok.vocab_size, overrides=_overrides(c))
    model = Transformer(mcfg, nnx.Rngs(c.seed))
    graphdef, state = nnx.split(model)
    shard = sharding.param_shardings(model, mesh)
    params = jax.device_put(nnx.to_pure_dict(state), shard)
    return ModelSource(mcfg, graphdef, params, shard, tok, f"preset:{preset}", loaded=False)

  path = resolve_path(init_from)
  if (c.get("lora") or {}).get("quantize") == "gguf":
    return _load_gguf_quantized(c, path, mesh)
  cfg, graphdef, params, tok = load_model(path, mesh=mesh)
  if tok is None:
    raise DataError(f"config.model.init_from={init_from!r}: the model has no tokenizer "
                    "(tokenizer.json next to the weights, GGUF metadata, or tokenizer/ in a "
                    "prefjax checkpoint)")
  new = _apply_overrides(cfg, _overrides(c), init_from)
  if new is not cfg:
    cfg = new
    graphdef, _ = abstract_params(cfg)
  model = nnx.merge(graphdef, params)
  shard = sharding.param_shardings(model, mesh)
  params = jax.device_put(params, shard)
  return ModelSource(cfg, graphdef, params, shard, tok, path, loaded=True)


# Stages that run on a model loaded with quantized projections (``lora.quantize="gguf"``).
GGUF_QUANTIZED_STAGES = ("dpo", "eval")


def check_gguf_quantized(c, path: str | None = None) -> None:
  """ConfigError unless ``lora.quantize="gguf"`` can apply: a .gguf model source and only
  stages that train LoRA adapters or evaluate."""
  path = path if path is not None else (c.model.init_from or "")
  if not path.endswith(".gguf"):
    raise ConfigError(f"lora.quantize='gguf' keeps a GGUF file's quantized blocks; "
                      f"config.model.init_from={path!r} is not a .gguf file")
  other = [s for s in c.stages if s not in GGUF_QUANTIZED_STAGES]
  if other:
    raise ConfigError(f"lora.quantize='gguf' loads the model with quantized projections, "
                      f"which only LoRA training and evaluation can use; stage {other[0]!r} "
                      f"cannot (stages: {', '.join(GGUF_QUANTIZED_STAGES)})")


def _load_gguf_quantized(c, path: str, mesh) -> ModelSource:
  """``config.lora.quantize="gguf"``: the file's own Q8_0 / Q4_0 / Q4_1 projections stay
  quantized (prefjax/models/gguf_quant.py); no float copy of them is made."""
  from prefjax.models import gguf_quant
  from prefjax.models.quant import quantized_shardings
  check_gguf_quantized(c, path)
  cfg, graphdef, params, tok = gguf_quant.load_gguf_quantized(path, mesh=mesh)
  new = _apply_overrides(cfg, _overrides(c), path)
  if new is not cfg:
    cfg = new
    graphdef, _ = abstract_params(cfg)
  shard = sharding.param_shardings(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))), mesh)
  params = jax.device_put(params, quantized_shardings(params, shard))
  return ModelSource(cfg, graphdef, params, shard, tok, path, loaded=True)
