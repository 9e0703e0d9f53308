"""What every run leaves behind: ``workdir/model/`` and ``workdir/export/hf/``.

  model/       a prefjax checkpoint (``model_config.json`` + Orbax ``params/``, and
               ``tokenizer/`` for real tokenizers): ``config.model.init_from=WORKDIR`` and
               every script's ``--model`` accept the workdir
  export/hf/   config.json + model.safetensors (+ tokenizer files for real tokenizers) that
               ``transformers`` loads; LoRA adapters are merged before this point
"""
from __future__ import annotations

import os

import jax

from prefjax import distributed
from prefjax.models.loading import MODEL_CONFIG, save_checkpoint
from prefjax.train.export import export_hf

MODEL_DIR = "model"
HF_DIR = os.path.join("export", "hf")


def final_model_dir(workdir: str) -> str | None:
  """``workdir/model/`` when it holds a checkpoint, else ``workdir/export/hf/`` when it holds
  a Hugging Face directory, else None (a run that did not finish)."""
  model_dir, hf_dir = os.path.join(workdir, MODEL_DIR), os.path.join(workdir, HF_DIR)
  if os.path.exists(os.path.join(model_dir, MODEL_CONFIG)):
    return model_dir
  if os.path.exists(os.path.join(hf_dir, "config.json")):
    return hf_dir
  return None


def _export_hf(path, cfg, params, tokenizer):
  if not hasattr(tokenizer, "save_pretrained"):   # the testbed's and byte tokenizers: code
    tokenizer = None
  export_hf(path, cfg, params, tokenizer)


def write_run_outputs(workdir: str, cfg, params, tokenizer, *, hf: bool = True) -> dict:
  """Writes the final policy; returns summary entries naming the outputs.

  The Orbax checkpoint is written by every process together; the HF export (host numpy)
  by process 0 from the gathered parameters.
  """
  model_dir = os.path.join(workdir, MODEL_DIR)
  save_checkpoint(model_dir, cfg, params)
  main = distributed.is_main()
  if main and tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
    tokenizer.save_pretrained(os.path.join(model_dir, "tokenizer"))
  out = {"outputs/model": model_dir}
  if hf:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      params = multihost_utils.process_allgather(params, tiled=True)
    hf_dir = os.path.join(workdir, HF_DIR)
    if main:
      _export_hf(hf_dir, cfg, params, tokenizer)
    out["outputs/hf"] = hf_dir
  return out
