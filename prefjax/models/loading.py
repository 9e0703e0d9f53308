"""One entry point for every model source: ``load_model(path)``.

Sources, told apart by what ``path`` holds:

* a Hugging Face directory (``config.json`` + ``*.safetensors``): ``hf.load_hf_dir``;
* a prefjax checkpoint directory (``model_config.json`` + Orbax ``params/``), as written by
  ``save_checkpoint`` or ``scripts/convert.py``;
* a ``*.gguf`` file: ``prefjax.models.gguf.load_gguf(path)``, imported lazily, which returns
  ``(hf_config: dict, state_dict: Mapping[str, np.ndarray], tokenizer_or_None)`` with HF
  tensor names; the weights then go through the same ``params_from_hf`` checks.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding

from prefjax import hostmem
from prefjax.errors import ConfigError, DataError
from prefjax.models.config import ModelConfig
from prefjax.models.hf import load_hf_dir
from prefjax.models.hf_weights import abstract_params
from prefjax.sharding import logical_to_spec
from prefjax.tokenizers import Tokenizer

MODEL_CONFIG = "model_config.json"
PARAMS_DIR = "params"


def source_kind(path: str) -> str:
  """"hf", "prefjax" or "gguf"; a DataError for anything else."""
  if path.endswith(".gguf"):
    if not os.path.isfile(path):
      raise DataError(f"{path}: no such GGUF file")
    return "gguf"
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, MODEL_CONFIG)):
      return "prefjax"
    if os.path.exists(os.path.join(path, "config.json")):
      return "hf"
  raise DataError(f"{path}: not a model (expected a Hugging Face directory with config.json, "
                  f"a prefjax checkpoint directory with {MODEL_CONFIG}, or a .gguf file)")


def hf_tokenizer(path: str):
  """The prompt/completion tokenizer (chat template included) of an HF directory, or None
  when it has no ``tokenizer.json`` or the ``tokenizers`` extra is not installed."""
  if not os.path.exists(os.path.join(path, "tokenizer.json")):
    return None
  return Tokenizer.from_hf_dir(path)


def save_params(directory: str, params) -> None:
  """Writes a bare parameter tree (e.g. the final policy) as an Orbax checkpoint."""
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.abspath(directory), params, force=True)


def load_params(directory: str, like=None, shardings=None):
  """Reads a tree written by ``save_params``; with ``like`` it is restored to that layout."""
  with ocp.StandardCheckpointer() as ckptr:
    if like is None:
      return ckptr.restore(os.path.abspath(directory))
    if shardings is None:
      shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), like)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
    return ckptr.restore(os.path.abspath(directory), abstract)


def save_checkpoint(path: str, cfg: ModelConfig, params, extra: dict[str, Any] | None = None):
  """Writes a prefjax checkpoint: ``model_config.json`` and Orbax ``params/``."""
  os.makedirs(path, exist_ok=True)
  save_params(os.path.join(path, PARAMS_DIR), params)
  with open(os.path.join(path, MODEL_CONFIG), "w") as f:
    json.dump({"model": cfg.to_dict(), **(extra or {})}, f, indent=2, sort_keys=True)


def load_checkpoint(path: str, *, mesh=None):
  """(cfg, graphdef, params, extra) from a directory written by ``save_checkpoint``."""
  fn = os.path.join(path, MODEL_CONFIG)
  try:
    with open(fn) as f:
      meta = json.load(f)
    cfg = ModelConfig.from_dict(meta.pop("model"))
  except (ValueError, KeyError, TypeError) as e:
    raise DataError(f"{fn}: not a prefjax model config ({e})") from None
  graphdef, leaves = abstract_params(cfg)
  like, shardings = {}, {}
  for p, (shape, dtype, axes) in leaves.items():
    _set(like, p, jax.ShapeDtypeStruct(shape, dtype))
    spec = logical_to_spec(axes or (None,) * len(shape), shape, mesh) if mesh is not None else None
    _set(shardings, p, NamedSharding(mesh, spec) if mesh is not None else
         jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  try:
    params = load_params(os.path.join(path, PARAMS_DIR), like, shardings)
  except Exception as e:   # Orbax reports structure / shape mismatches in many types
    raise DataError(f"{os.path.join(path, PARAMS_DIR)}: cannot restore parameters for "
                    f"{fn} ({str(e).splitlines()[0]})") from None
  return cfg, graphdef, params, meta


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def load_model(path: str, *, mesh=None, dtype=None):
  """(cfg, graphdef, params, tokenizer_or_None) from a HF dir, prefjax checkpoint or GGUF."""
  out = _load_model(path, mesh=mesh, dtype=dtype)
  hostmem.trim()          # the conversion's numpy temporaries (~0.5 GB for a 135M model)
  return out


def _load_model(path: str, *, mesh=None, dtype=None):
  kind = source_kind(path)
  if kind == "hf":
    cfg, graphdef, params = load_hf_dir(path, mesh=mesh, dtype=dtype)
    return cfg, graphdef, params, hf_tokenizer(path)
  if kind == "prefjax":
    cfg, graphdef, params, _ = load_checkpoint(path, mesh=mesh)
    tok_dir = os.path.join(path, "tokenizer")
    return cfg, graphdef, params, hf_tokenizer(tok_dir) if os.path.isdir(tok_dir) else None
  try:
    gguf = importlib.import_module("prefjax.models.gguf")
  except ImportError:
    raise ConfigError(f"{path}: GGUF input needs prefjax.models.gguf (not installed in this "
                      "checkout)") from None
  return gguf.load_gguf(path, mesh=mesh, dtype=dtype)
