"""Chat with a model, streaming tokens as they decode.

  python scripts/generate.py --model SmolLM2-135M-Instruct.Q4_1.gguf \\
      --prompt "What is the capital of France?" [--max_new_tokens 64] [--temperature 0]

The prompt goes through the checkpoint's chat template (``Tokenizer.encode_prompt``); decoding is
a Python loop over a jitted one-token step with the KV cache, printing text as it appears.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard
from prefjax.errors import ConfigError
from prefjax.models import init_cache
from prefjax.tokenizers import Tokenizer

_MODEL = flags.DEFINE_string("model", None, "GGUF file, or a HF / prefjax model directory.",
                             required=True)
_PROMPT = flags.DEFINE_string("prompt", None, "User message (goes through the chat template).",
                              required=True)
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (temperature > 0).")


def load(path):
  """(cfg, graphdef, params, Tokenizer) from a GGUF file or a HF/prefjax directory."""
  if path.endswith(".gguf"):
    from prefjax.models.gguf import load_gguf
    return load_gguf(path)
  from prefjax.models.loading import load_model
  cfg, graphdef, params, _ = load_model(path)
  return cfg, graphdef, params, Tokenizer.from_hf_dir(path)


def stream(graphdef, params, cfg, tok, prompt_ids, *, max_new_tokens, temperature, seed=0,
           out=sys.stdout):
  """Greedy (temperature 0) or sampled decoding; prints text as it decodes; returns new ids."""
  total = len(prompt_ids) + max_new_tokens
  cache = init_cache(cfg, 1, total)

  @jax.jit
  def fwd(params, cache, tokens, positions):
    model = nnx.merge(graphdef, params)
    logits, cache = model(tokens, positions, jnp.ones_like(tokens), cache=cache)
    return logits[:, -1], cache

  ids = jnp.asarray([prompt_ids], jnp.int32)
  logits, cache = fwd(params, cache, ids, jnp.arange(len(prompt_ids))[None])
  rng = jax.random.PRNGKey(seed)
  new, shown = [], ""
  for t in range(max_new_tokens):
    if temperature > 0:
      rng, sub = jax.random.split(rng)
      nxt = int(jax.random.categorical(sub, logits[0] / temperature))
    else:
      nxt = int(jnp.argmax(logits[0]))
    if nxt in tok.stop_ids:
      break
    new.append(nxt)
    text = tok.decode(new)
    if not text.endswith("\ufffd"):          # wait for complete UTF-8 characters
      out.write(text[len(shown):])
      out.flush()
      shown = text
    pos = jnp.asarray([[len(prompt_ids) + t]], jnp.int32)
    logits, cache = fwd(params, cache, jnp.asarray([[nxt]], jnp.int32), pos)
  out.write("\n")
  return new


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  logging.set_verbosity(logging.WARNING)
  if _MAX_NEW_TOKENS.value < 1:
    raise ConfigError(f"--max_new_tokens must be at least 1, got {_MAX_NEW_TOKENS.value}")
  if _TEMPERATURE.value < 0:
    raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {_TEMPERATURE.value}")
  cfg, graphdef, params, tok = load(_MODEL.value)
  stream(graphdef, params, cfg, tok, tok.encode_prompt(_PROMPT.value),
         max_new_tokens=_MAX_NEW_TOKENS.value, temperature=_TEMPERATURE.value, seed=_SEED.value)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
