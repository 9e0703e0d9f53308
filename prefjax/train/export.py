"""A run's model as a Hugging Face directory.

    export_hf("W/export/hf", cfg, params, tokenizer)            # transformers loads it
    export_hf("W/export/hf", cfg, base, tokenizer, lora=(adapters, scale))   # LoRA merged

The HF directory holds ``config.json``, ``model.safetensors`` and, with a tokenizer,
``tokenizer.json``, ``tokenizer_config.json`` (chat template, special tokens),
``special_tokens_map.json`` and ``generation_config.json`` (BOS / EOS / pad ids; EOS lists
every stop id, e.g. ``<|im_end|>`` and ``<|endoftext|>``). Every file is mode 0644.
``transformers.AutoModelForCausalLM.from_pretrained`` gives prefjax's logits (float32).

The runner writes ``W/model/`` (a prefjax checkpoint: ``model_config.json``, ``params/``,
``tokenizer/``) and ``W/export/hf/`` at the end of each run (``prefjax.train.outputs``);
``prefjax.train.finished_run.load_run`` reads a workdir back.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from prefjax.models.hf import save_hf_dir
from prefjax.models.lora import merge_lora


def export_hf(directory: str, cfg, params, tokenizer=None, *, lora: tuple | None = None,
              hf_config_extra: Mapping[str, Any] | None = None) -> str:
  """Writes ``directory`` as an HF model directory (tokenizer files too, when given one).

  Args:
    directory: created if needed; existing files of the same names are replaced.
    cfg: the ``ModelConfig``; params: its pure params dict (float32 or bfloat16; written
      as float32 when bfloat16, see ``save_hf_dir``).
    tokenizer: a ``prefjax.tokenizers.Tokenizer`` (anything with ``save_pretrained``) or None.
    lora: optional ``(lora_params, scale)``; the adapters are merged into ``params``
      (``prefjax.models.lora.merge_lora``: W + scale * A @ B) before writing.
    hf_config_extra: extra ``config.json`` entries.
  Returns:
    ``directory``.
  """
  if lora is not None:
    lora_params, scale = lora
    params = merge_lora(params, lora_params, float(scale))
  extra = dict(hf_config_extra or {})
  gen = None
  if tokenizer is not None:
    ids = {"bos_token_id": tokenizer.bos_id, "pad_token_id": tokenizer.pad_id,
           "eos_token_id": tokenizer.eos_id}
    extra = {**{k: v for k, v in ids.items() if v is not None}, **extra}
    stops = list(getattr(tokenizer, "stop_ids", ()) or ())
    gen = {k: v for k, v in ids.items() if v is not None}
    if stops:
      gen["eos_token_id"] = stops if len(stops) > 1 else stops[0]
  save_hf_dir(directory, cfg, params, hf_config_extra=extra)
  if tokenizer is not None:
    tokenizer.save_pretrained(directory, model_max_length=cfg.max_len)
    fn = os.path.join(directory, "generation_config.json")
    with open(fn, "w") as f:
      json.dump(gen, f, indent=2, sort_keys=True)
    os.chmod(fn, 0o644)
  return directory
