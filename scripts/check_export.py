"""Logits of a run's exported HF directory in transformers vs prefjax's own, float32 and 64.

  python scripts/check_export.py --workdir runs/smollm2_dpo

Loads ``W/model`` (prefjax) and ``W/export/hf`` (transformers, float32 and float64), runs one
chat prompt + completion through both, and prints the max abs logit differences: prefjax
float32 vs transformers float32, each against transformers float64 (the float32 rounding of
each implementation).
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training workdir.", required=True)
_PROMPT = flags.DEFINE_string("prompt", "How do I bake bread?", "User turn.")
_COMPLETION = flags.DEFINE_string("completion", "Mix flour and water.", "Assistant turn.")


def main(argv):
  del argv
  from prefjax.extras import require
  require("torch", "real", "comparing the export with transformers")
  require("transformers", "real", "comparing the export with transformers")
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers
  from flax import nnx
  from prefjax.train import export
  _, graphdef, params, tok = export.load_workdir(_WORKDIR.value)
  hf = os.path.join(_WORKDIR.value, export.WORKDIR_HF)
  chat = [{"role": "user", "content": _PROMPT.value}]
  x = np.array([tok.encode_prompt(chat) + tok.encode_completion(_COMPLETION.value)], np.int32)
  ours, _ = nnx.merge(graphdef, params)(jnp.asarray(x), jnp.arange(x.shape[1])[None],
                                        jnp.ones_like(jnp.asarray(x)))
  ours = np.asarray(ours, np.float64)
  theirs = {}
  for dt in (torch.float32, torch.float64):
    m = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=dt)
    with torch.no_grad():
      theirs[dt] = m(torch.tensor(x, dtype=torch.long)).logits.double().numpy()
  f32, f64 = theirs[torch.float32], theirs[torch.float64]
  print(f"{x.shape[1]} tokens, max |logit| {np.abs(f64).max():.1f}")
  print(f"prefjax float32 vs transformers float32: {np.abs(ours - f32).max():.3g}")
  print(f"prefjax float32 vs transformers float64: {np.abs(ours - f64).max():.3g}")
  print(f"transformers float32 vs float64:         {np.abs(f32 - f64).max():.3g}")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
