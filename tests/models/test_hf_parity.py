"""Parity with transformers: tiny random HF models of every family load into prefjax and
give the same next-token logits (float32, max abs diff <= 1e-4), greedy generations agree,
and export -> transformers reload round-trips. Bad checkpoints give one-line errors."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")

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
  if cfg.sliding_window:             # the window really cuts the context: without it, no match
    from prefjax.models.hf_weights import abstract_params
    full_graphdef, _ = abstract_params(cfg.replace(sliding_window=None, layer_types=None))
    assert _max_diff(_our_logits(full_graphdef, params, tokens, mask), ref, mask) > 1e-3

  # Export round trip: prefjax -> save_hf_dir -> transformers -> the same logits.
  out = str(tmp_path / (family + "_export"))
  save_hf_dir(out, cfg, params)
  back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  back.eval()
  diff_back = _max_diff(_hf_logits(back, tokens, mask), ref, mask)
  print(f"{family}: export round trip max |logit diff| = {diff_back:.2e}")
  assert diff_back <= 1e-5, diff_back


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_greedy_generation_matches_transformers(family, tmp_path):
  model, path = _hf_model(family, tmp_path)
  _, graphdef, params = load_hf_dir(path)
  prompts = [[5, 17, 200, 3, 99], [42, 7, 7, 130, 8]]
  with torch.no_grad():
    ref = model.generate(torch.tensor(prompts), attention_mask=torch.ones(2, 5, dtype=torch.long),
                         max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
  ref = ref[:, 5:].numpy().tolist()
  ours = generate(graphdef, params, prompts, max_new_tokens=16, rng=jax.random.key(0),
                  temperature=0.0, eos_id=-1, batch_size=2)
  assert ours == ref


def test_bfloat16_compute_with_float32_master_weights(tmp_path):
  model, path = _hf_model("llama", tmp_path)
  cfg, graphdef, params = load_hf_dir(path, compute_dtype="bfloat16")
  assert cfg.dtype == "bfloat16" and params["embed"].dtype == jnp.float32
  tokens, mask = _batch()
  ours = _our_logits(graphdef, params, tokens, mask)
  diff = _max_diff(ours, _hf_logits(model, tokens, mask), mask)
  assert 0 < diff < 0.1, diff        # bf16 rounding, but the same function


def test_mesh_placement(tmp_path):
  from prefjax.sharding import make_mesh
  _, path = _hf_model("qwen3", tmp_path)
  mesh = make_mesh()
  _, _, params = load_hf_dir(path, mesh=mesh)
  q = params["blocks"][0]["attn"]["q"]
  assert q.sharding.mesh == mesh and q.shape == (64, 4, 16)


def test_truncated_safetensors_is_one_line_error(tmp_path):
  _, path = _hf_model("llama", tmp_path)
  fn = os.path.join(path, "model.safetensors")
  with open(fn, "rb") as f:
    data = f.read()
  with open(fn, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(DataError, match=r"model\.safetensors: corrupted or truncated") as e:
    load_hf_dir(path)
  assert "\n" not in str(e.value)


def test_shape_mismatch_names_the_tensor(tmp_path):
  _, path = _hf_model("llama", tmp_path)
  fn = os.path.join(path, "config.json")
  with open(fn) as f:
    hf = json.load(f)
  hf["hidden_size"] = 32
  with open(fn, "w") as f:
    json.dump(hf, f)
  with pytest.raises(DataError, match=r"tensor 'model\.embed_tokens\.weight' has shape "
                     r"\(256, 64\) in the checkpoint, expected \(256, 32\)"):
    load_hf_dir(path)


def test_missing_and_unexpected_tensors(tmp_path):
  from prefjax.models.hf import config_from_hf, params_from_hf, open_safetensors, read_hf_config
  _, path = _hf_model("qwen2", tmp_path)
  cfg = config_from_hf(read_hf_config(path))
  tensors = dict(open_safetensors(path))
  del tensors["model.layers.1.self_attn.k_proj.bias"]
  with pytest.raises(DataError, match=r"'model\.layers\.1\.self_attn\.k_proj\.bias' is missing"):
    params_from_hf(tensors, cfg)
  tensors = dict(open_safetensors(path), **{"model.layers.2.mlp.up_proj.weight": np.zeros(3)})
  with pytest.raises(DataError, match=r"unexpected tensor 'model\.layers\.2\.mlp\.up_proj"):
    params_from_hf(tensors, cfg)
  tensors = dict(open_safetensors(path))
  tensors["model.norm.weight"] = np.zeros(64, np.int32)
  with pytest.raises(DataError, match=r"'model\.norm\.weight' has dtype int32"):
    params_from_hf(tensors, cfg)


def test_unsupported_model_type(tmp_path):
  _, path = _hf_model("llama", tmp_path)
  fn = os.path.join(path, "config.json")
  with open(fn) as f:
    hf = json.load(f)
  hf["model_type"] = "falcon"
  with open(fn, "w") as f:
    json.dump(hf, f)
  with pytest.raises(ConfigError, match=r"model_type='falcon' is not supported; supported: "
                     r"llama, mistral, qwen2, qwen3, gemma2, gemma3_text, gpt2"):
    load_hf_dir(path)


def test_unsupported_rope_scaling():
  from prefjax.models.hf import config_from_hf
  hf = dict(FAMILIES["llama"]().to_dict(), rope_parameters=dict(rope_type="yarn", factor=4.0,
                                                                 rope_theta=10000.0))
  with pytest.raises(ConfigError, match="rope_type='yarn' is not supported"):
    config_from_hf(hf)


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_num_params_counts_every_weight(family, tmp_path):
  model, path = _hf_model(family, tmp_path)
  cfg, _, params = load_hf_dir(path)
  assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(params))
