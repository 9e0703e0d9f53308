"""Chat with a model, streaming tokens as they decode.

  python scripts/generate.py --model SmolLM2-135M-Instruct.Q4_1.gguf \
      --prompt "What is the capital of France?" [--max-new-tokens 64] [--temperature 0]

The prompt goes through the checkpoint's chat template (``Tokenizer.encode_prompt``); decoding is
a Python loop over a jitted one-token step with the KV cache, printing text as it appears.
"""
from __future__ import annotations

import os
import argparse
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard
from prefjax.models import init_cache
from prefjax.tokenizers import Tokenizer


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


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", required=True)
  ap.add_argument("--prompt", required=True)
  ap.add_argument("--max-new-tokens", type=int, default=64)
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  cfg, graphdef, params, tok = load(a.model)
  stream(graphdef, params, cfg, tok, tok.encode_prompt(a.prompt),
         max_new_tokens=a.max_new_tokens, temperature=a.temperature, seed=a.seed)


if __name__ == "__main__":
  main_guard(main)
