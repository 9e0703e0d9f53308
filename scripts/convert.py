"""Convert models between Hugging Face, prefjax and (input only) GGUF formats.

  python scripts/convert.py --from path/to/hf_dir --to ckpt/smollm2      # HF -> prefjax
  python scripts/convert.py --from model.gguf --to ckpt/smollm2          # GGUF -> prefjax
  python scripts/convert.py --from ckpt/smollm2 --to hf_out/             # prefjax -> HF

The input kind is detected (config.json = HF, model_config.json = prefjax, *.gguf = GGUF);
the output is a prefjax checkpoint unless the input is one (then a HF directory), or as
``--to_format`` says.
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard

_FROM = flags.DEFINE_string("from", None, "Input: HF directory, prefjax checkpoint or .gguf.")
_TO = flags.DEFINE_string("to", None, "Output directory.")
_TO_FORMAT = flags.DEFINE_enum("to_format", None, ["hf", "prefjax"],
                               "Output format (default: prefjax, or hf for a prefjax input).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Parameter dtype.")
flags.mark_flags_as_required(["from", "to"])


def main(argv):
  del argv
  from prefjax.models import hf, loading
  src = flags.FLAGS["from"].value
  kind = loading.source_kind(src)
  to_format = _TO_FORMAT.value or ("hf" if kind == "prefjax" else "prefjax")
  cfg, _, params, tokenizer = loading.load_model(src, dtype=_DTYPE.value)
  if to_format == "hf":
    hf.save_hf_dir(_TO.value, cfg, params)
  else:
    loading.save_checkpoint(_TO.value, cfg, params, extra={"source": src, "source_kind": kind})
  if tokenizer is not None and hasattr(tokenizer, "save"):
    import os
    if to_format == "hf":
      tokenizer.save(os.path.join(_TO.value, "tokenizer.json"))
    else:
      os.makedirs(os.path.join(_TO.value, "tokenizer"), exist_ok=True)
      tokenizer.save(os.path.join(_TO.value, "tokenizer", "tokenizer.json"))
  n = sum(x.size for x in __import__("jax").tree.leaves(params))
  print(f"{kind} {src} -> {to_format} {_TO.value}: {cfg.n_layers} layers, dim {cfg.dim}, "
        f"{n / 1e6:.2f}M parameters")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
