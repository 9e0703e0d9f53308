"""Convert models between Hugging Face, prefjax and (input only) GGUF formats.

  python scripts/convert.py --from path/to/hf_dir --to ckpt/smollm2      # HF -> prefjax
  python scripts/convert.py --from model.gguf --to ckpt/smollm2          # GGUF -> prefjax
  python scripts/convert.py --from model.gguf --to hf_out/ --to_format hf
  python scripts/convert.py --from ckpt/smollm2 --to hf_out/             # prefjax -> HF
  python scripts/convert.py --from runs/dpo --to hf_out/                 # training workdir -> HF

The input kind is detected (``prefjax.train.finished_run.load_run``): a training workdir (its
final model, ``model/`` or ``export/hf/``, as the runner writes) or one of its DPO
checkpoints, ``model_config.json`` = prefjax checkpoint, ``config.json`` = HF, ``*.gguf``.
The output is a prefjax checkpoint unless the input is a prefjax checkpoint or a workdir
(then a HF directory), or as ``--to_format`` says. The source's tokenizer (with its chat
template) is always written: HF tokenizer files in the HF directory, or ``tokenizer/`` in a
checkpoint.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard

_FROM = flags.DEFINE_string("from", None,
                            "Input: HF directory, prefjax checkpoint, .gguf or training workdir.")
_TO = flags.DEFINE_string("to", None, "Output directory.")
_TO_FORMAT = flags.DEFINE_enum("to_format", None, ["hf", "prefjax"],
                               "Output format (default: prefjax, or hf for a prefjax checkpoint "
                               "or a training workdir).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter dtype.")
flags.mark_flags_as_required(["from", "to"])


def main(argv):
  del argv
  import jax
  from prefjax.models import loading
  from prefjax.train import export
  from prefjax.train.finished_run import load_run
  src, dst = flags.FLAGS["from"].value, _TO.value
  run = load_run(src, dtype=_DTYPE.value, need=("policy",))
  kind, cfg, params, tokenizer = run.kind, run.model_config, run.policy, run.tokenizer
  to_format = _TO_FORMAT.value or ("hf" if kind in ("prefjax", "workdir", "checkpoint")
                                   else "prefjax")
  if not hasattr(tokenizer, "save_pretrained"):
    tokenizer = None
  if to_format == "hf":
    export.export_hf(dst, cfg, params, tokenizer)
  else:
    loading.save_checkpoint(dst, cfg, params, extra={"source": src, "source_kind": kind})
    if tokenizer is not None:
      tokenizer.save_pretrained(os.path.join(dst, "tokenizer"), model_max_length=cfg.max_len)
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"{kind} {src} -> {to_format} {dst}: {cfg.n_layers} layers, dim {cfg.dim}, "
        f"{n / 1e6:.2f}M parameters, tokenizer {'written' if tokenizer else 'none in the source'}")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
