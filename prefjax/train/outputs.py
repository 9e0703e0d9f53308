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
from prefjax.models.loading import save_checkpoint
from prefjax.train.export import export_hf


def _export_hf(path, cfg, params, tokenizer):
  if not hasattr(tokenizer, "save_pretrained"):   # the testbed's and byte tokenizers: code
    tokenizer = None
  export_hf(path, cfg, params, tokenizer)


def write_run_outputs(workdir: str, cfg, params, tokenizer, *, hf: bool = True) -> dict:
  """Writes the final policy; returns summary entries naming the outputs.

  The Orbax checkpoint is written by every process together; the HF export (host numpy)
  by process 0 from the gathered parameters.
  """
  model_dir = os.path.join(workdir, "model")
  save_checkpoint(model_dir, cfg, params)
  main = distributed.is_main()
  if main and tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
    tokenizer.save_pretrained(os.path.join(model_dir, "tokenizer"))
  out = {"outputs/model": model_dir}
  if hf:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      params = multihost_utils.process_allgather(params, tiled=True)
    hf_dir = os.path.join(workdir, "export", "hf")
    if main:
      _export_hf(hf_dir, cfg, params, tokenizer)
    out["outputs/hf"] = hf_dir
  return out
