"""What every run leaves behind: ``workdir/model/`` and ``workdir/export/hf/``.

  model/       a prefjax checkpoint (``model_config.json`` + Orbax ``params/``, and
               ``tokenizer/`` for real tokenizers): ``config.model.init_from=WORKDIR`` and
               every script's ``--model`` accept the workdir
  export/hf/   config.json + model.safetensors (+ tokenizer files for real tokenizers) that
               ``transformers`` loads; LoRA adapters are merged before this point
"""
from __future__ import annotations

import os

from prefjax.models.loading import save_checkpoint


def _export_hf(path, cfg, params, tokenizer):
  try:
    from prefjax.train.export import export_hf
  except ImportError:
    export_hf = None
  if export_hf is not None:
    export_hf(path, cfg, params, tokenizer)
    return
  from prefjax.models.hf import save_hf_dir
  save_hf_dir(path, cfg, params)
  if tokenizer is not None and hasattr(tokenizer, "save"):
    tokenizer.save(os.path.join(path, "tokenizer.json"))


def write_run_outputs(workdir: str, cfg, params, tokenizer, *, hf: bool = True) -> dict:
  """Writes the final policy; returns summary entries naming the outputs."""
  model_dir = os.path.join(workdir, "model")
  save_checkpoint(model_dir, cfg, params)
  if tokenizer is not None and hasattr(tokenizer, "save"):
    os.makedirs(os.path.join(model_dir, "tokenizer"), exist_ok=True)
    tokenizer.save(os.path.join(model_dir, "tokenizer", "tokenizer.json"))
  out = {"outputs/model": model_dir}
  if hf:
    hf_dir = os.path.join(workdir, "export", "hf")
    _export_hf(hf_dir, cfg, params, tokenizer)
    out["outputs/hf"] = hf_dir
  return out
