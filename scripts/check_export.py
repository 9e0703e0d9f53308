"""Logits of a run's exported HF directory in transformers vs prefjax, float32 and float64.

  python scripts/check_export.py --workdir runs/smollm2_dpo

Runs one chat prompt + completion through prefjax (``W/model``, float32; ``W/export/hf`` in
float64) and transformers (``W/export/hf``, float32 and float64) and prints the max abs logit
differences: prefjax float32 vs transformers float32 (the export's parity), both float64
forwards (a weight or layout error shows here; transformers keeps RMSNorm and RoPE in float32
even in a float64 model, so expect ~1e-5, not 1e-12), and each float32 forward against
prefjax's float64 one (each implementation's own float32 rounding).
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
  require("torch", "parity", "comparing the export with transformers")
  require("transformers", "parity", "comparing the export with transformers")
  import jax
  jax.config.update("jax_enable_x64", True)         # for the float64 forward only
  import jax.numpy as jnp
  import numpy as np
  import torch
  import transformers
  from flax import nnx
  from prefjax.models.hf import load_hf_dir
  from prefjax.train.finished_run import load_run
  from prefjax.train.outputs import HF_DIR
  run = load_run(_WORKDIR.value, need=("policy",))
  graphdef, params, tok = run.graphdef, run.policy, run.tokenizer
  hf = os.path.join(_WORKDIR.value, HF_DIR)
  chat = [{"role": "user", "content": _PROMPT.value}]
  x = np.array([tok.encode_prompt(chat) + tok.encode_completion(_COMPLETION.value)], np.int32)
  args = (jnp.asarray(x), jnp.arange(x.shape[1], dtype=jnp.int32)[None],
          jnp.ones_like(jnp.asarray(x)))
  ours = {"float32": np.asarray(nnx.merge(graphdef, params)(*args)[0], np.float64)}
  _, g64, p64 = load_hf_dir(hf, dtype="float64", compute_dtype="float64")
  ours["float64"] = np.asarray(nnx.merge(g64, p64)(*args)[0], np.float64)
  theirs = {}
  for name, dt in (("float32", torch.float32), ("float64", torch.float64)):
    m = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=dt)
    with torch.no_grad():
      theirs[name] = m(torch.tensor(x, dtype=torch.long)).logits.double().numpy()
  diff = lambda a, b: f"{np.abs(a - b).max():.3g}"
  print(f"{x.shape[1]} tokens, max |logit| {np.abs(ours['float64']).max():.1f}")
  print(f"prefjax float32 vs transformers float32:  {diff(ours['float32'], theirs['float32'])}")
  print(f"prefjax float64 vs transformers float64:  {diff(ours['float64'], theirs['float64'])}")
  print(f"prefjax float32 vs prefjax float64:       {diff(ours['float32'], ours['float64'])}")
  print(f"transformers float32 vs prefjax float64:  {diff(theirs['float32'], ours['float64'])}")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
