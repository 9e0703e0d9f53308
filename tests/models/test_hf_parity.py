"""Parity with transformers: tiny random HF models of every family load into prefjax and
give the same next-token logits (float32, max abs diff <= 1e-4), greedy generations agree,
and export -> transformers reload round-trips. Bad checkpoints give one-line errors."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax.errors import ConfigError, DataError
from prefjax.models.hf import load_hf_dir, save_hf_dir
from prefjax.sampling.sampler import generate

V, T, B = 256, 24, 3
_LLAMA = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
_GEMMA = dict(_LLAMA, head_dim=16, query_pre_attn_scalar=24, sliding_window=6,
              layer_types=["sliding_attention", "full_attention"])

FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**_LLAMA, rope_theta=500000.0),
    "llama3_rope": lambda: transformers.LlamaConfig(**_LLAMA, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16)),
    "mistral": lambda: transformers.MistralConfig(**_LLAMA, sliding_window=8),
    "qwen2": lambda: transformers.Qwen2Config(**_LLAMA, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**_LLAMA, head_dim=16),
    "gemma2": lambda: transformers.Gemma2Config(**_GEMMA, attn_logit_softcapping=5.0,
                                                final_logit_softcapping=3.0),
    "gemma3": lambda: transformers.Gemma3TextConfig(**_GEMMA, rope_parameters=dict(
        sliding_attention=dict(rope_type="default", rope_theta=10000.0),
        full_attention=dict(rope_type="default", rope_theta=1000000.0))),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4,
                                            n_positions=64),
}


def _hf_model(family, tmp_path):
  torch.manual_seed(0)
  cfg = FAMILIES[family]()
  cfg.pad_token_id = cfg.bos_token_id = cfg.eos_token_id = None
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
  with torch.no_grad():      # norms start at 1 (0 for Gemma): randomise so a mix-up shows
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  model.eval()
  path = str(tmp_path / family)
  model.save_pretrained(path)
  return model, path


def _batch(seed=0):
  """Right-padded rows (lengths T, T-5, T-11): tokens, attention mask."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, V, (B, T)).astype(np.int32)
  mask = np.ones((B, T), np.int32)
  for i, n in enumerate([T, T - 5, T - 11]):
    mask[i, n:] = 0
  return tokens, mask


def _hf_logits(model, tokens, mask):
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos, dtype=torch.long))
  return out.logits.float().numpy()


def _our_logits(graphdef, params, tokens, mask):
  model = nnx.merge(graphdef, params)
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  logits, _ = model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(mask))
  return np.asarray(logits)


def _max_diff(a, b, mask):
  return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
  model, path = _hf_model(family, tmp_path)
  cfg, graphdef, params = load_hf_dir(path)
  tokens, mask = _batch()
  ref = _hf_logits(model, tokens, mask)
  ours = _our_logits(graphdef, params, tokens, mask)
  diff = _max_diff(ours, ref, mask)
  print(f"{family}: max |logit diff| = {diff:.2e}")
  assert diff <= 1e-4, diff
  if cfg.sliding_window:
    assert cfg.sliding_window < T     # the window really cuts the context

  # Export round trip: prefjax -> save_hf_dir -> transformers -> the same logits.
  out = str(tmp_path / (family + "_export"))
  save_hf_dir(out, cfg, params)
  back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  back.eval()
  diff_back = _max_diff(_hf_logits(back, tokens, mask), ref, mask)
  print(f"{family}: export round trip max |logit diff| = {diff_back:.2e}")
  assert diff_back <= 1e-5, diff_back
