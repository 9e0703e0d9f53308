"""Load Hugging Face checkpoint directories into prefjax, and export back.

  cfg, graphdef, params = load_hf_dir("path/to/SmolLM2-135M")    # config.json + *.safetensors
  save_hf_dir("out/", cfg, params)      # transformers.AutoModelForCausalLM loads it

Tensors are read lazily with ``safetensors.safe_open`` (sharded checkpoints through
``model.safetensors.index.json``) and placed on the mesh one at a time.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Iterator, Mapping

import numpy as np

from prefjax.errors import DataError
from prefjax.models.config import ModelConfig
from prefjax.models.hf_config import config_from_hf, config_to_hf, hf_family
from prefjax.models.hf_weights import abstract_params, params_from_hf, params_to_hf

__all__ = ["config_from_hf", "config_to_hf", "params_from_hf", "params_to_hf", "load_hf_dir",
           "save_hf_dir", "open_safetensors", "read_hf_config"]


class SafetensorsDict(Mapping):
  """A lazy, read-only name -> numpy array view over one or more safetensors files."""

  def __init__(self, files: list[str]):
    from safetensors import safe_open
    self._handles, self._where = {}, {}
    for path in files:
      try:
        handle = safe_open(path, framework="numpy")
        keys = list(handle.keys())
      except Exception as e:  # safetensors raises its own SafetensorError / OSError types
        raise DataError(f"{path}: corrupted or truncated safetensors file "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
      self._handles[path] = handle
      for k in keys:
        self._where[k] = path

  def __getitem__(self, name: str) -> np.ndarray:
    path = self._where[name]
    try:
      return self._handles[path].get_tensor(name)
    except TypeError:                    # numpy has no bfloat16: read the raw bytes instead
      return _read_raw(path, name)
    except Exception as e:
      raise DataError(f"{path}: cannot read tensor {name!r} ({e})") from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


def _read_raw(path: str, name: str) -> np.ndarray:
  """One tensor via the safetensors header and a memory map (for BF16 / F8)."""
  import ml_dtypes
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
  info = header[name]
  dtype = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32,
           "F64": np.float64, "F8_E4M3": ml_dtypes.float8_e4m3fn}.get(info["dtype"])
  if dtype is None:
    raise DataError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
  start, end = info["data_offsets"]
  mm = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n + start, shape=(end - start,))
  return mm.view(dtype).reshape(info["shape"])


def open_safetensors(path: str) -> SafetensorsDict:
  """The tensors of a HF directory (sharded or not) or of one ``.safetensors`` file."""
  if os.path.isfile(path):
    return SafetensorsDict([path])
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError) as e:
      raise DataError(f"{index}: not a safetensors index ({e})") from None
    files = sorted({os.path.join(path, v) for v in weight_map.values()})
    for fn in files:
      if not os.path.exists(fn):
        raise DataError(f"{index}: shard {os.path.basename(fn)} does not exist")
  else:
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise DataError(f"{path}: no *.safetensors weights (PyTorch .bin checkpoints are not read; "
                    "convert them with transformers' save_pretrained(safe_serialization=True))")
  return SafetensorsDict(files)


def read_hf_config(path: str) -> dict[str, Any]:
  fn = os.path.join(path, "config.json")
  try:
    with open(fn) as f:
      return json.load(f)
  except FileNotFoundError:
    raise DataError(f"{path}: no config.json (not a Hugging Face model directory)") from None
  except ValueError as e:
    raise DataError(f"{fn}: invalid JSON ({e})") from None


def load_hf_dir(path: str, *, mesh=None, dtype=None, compute_dtype=None):
  """(model_cfg, graphdef, params) from a HF directory (``config.json`` + safetensors).

  Args:
    path: the directory.
    mesh: optional ``jax.sharding.Mesh``; parameters land sharded by the rule table.
    dtype: parameter dtype (default float32).
    compute_dtype: activation dtype (default float32; "bfloat16" keeps float32 weights).
  Raises:
    ConfigError / DataError (one line naming the field, file or tensor).
  """
  over = {}
  if dtype is not None:
    over["param_dtype"] = str(np.dtype(dtype)) if dtype != "bfloat16" else "bfloat16"
  if compute_dtype is not None:
    over["dtype"] = compute_dtype
  cfg = config_from_hf(read_hf_config(path), **over)
  tensors = open_safetensors(path)
  params = params_from_hf(tensors, cfg, mesh=mesh)
  graphdef, _ = abstract_params(cfg)
  return cfg, graphdef, params


def save_hf_dir(path: str, cfg: ModelConfig, params, hf_config_extra: Mapping | None = None):
  """Writes ``config.json`` + ``model.safetensors`` that transformers loads.

  bfloat16 parameters are written as float32 (numpy's safetensors writer has no bfloat16).
  Both files are mode 0644 (safetensors creates its file 0600).
  """
  from safetensors.numpy import save_file
  hf = config_to_hf(cfg, hf_family(cfg))
  hf.update(dict(hf_config_extra or {}))
  os.makedirs(path, exist_ok=True)
  tensors = dict(params_to_hf(params, cfg))
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2, sort_keys=True)
  for name in ("model.safetensors", "config.json"):
    os.chmod(os.path.join(path, name), 0o644)
