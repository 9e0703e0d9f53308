"""scripts/convert.py: tokenizer files always written, training workdirs accepted, mode 0644,
one-line errors."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")
pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")

from tests.train import test_export as tx

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "convert.py"


def _convert(*args):
  return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                        text=True, cwd=ROOT, timeout=600)


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def _source(tmp_path):
  """A tiny transformers Llama with a ChatML tokenizer (vocab grown to fit the tokenizer)."""
  import torch
  tok = tx._tiny_tokenizer()
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=1, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=64)
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
  src = tmp_path / "src"
  model.save_pretrained(src)
  tok.save_pretrained(str(src))
  return tok, model, src


def _hf_dir_ok(path, tok, model):
  for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "generation_config.json"):
    assert _mode(path / name) == 0o644, name
  tx._check_tokenizer_dir(tok, str(path))
  tokens = np.arange(10, dtype=np.int64)[None] % tok.vocab_size
  import torch
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(tokens)).logits.numpy()
  assert np.abs(tx._hf_logits(str(path), tokens) - ref).max() <= 1e-4


def test_hf_to_checkpoint_to_hf_keeps_the_tokenizer(tmp_path):
  tok, model, src = _source(tmp_path)
  r = _convert("--from", src, "--to", tmp_path / "ck")
  assert r.returncode == 0, r.stderr
  assert "tokenizer written" in r.stdout
  with open(tmp_path / "ck" / "tokenizer" / "tokenizer_config.json") as f:
    assert json.load(f)["chat_template"] == tok.chat_template
  r = _convert("--from", tmp_path / "ck", "--to", tmp_path / "hf")
  assert r.returncode == 0, r.stderr
  _hf_dir_ok(tmp_path / "hf", tok, model)


def test_training_workdir_is_accepted_and_a_bare_one_is_a_clear_error(tmp_path):
  tok, model, src = _source(tmp_path)
  w = tmp_path / "run"
  (w / "checkpoints" / "dpo" / "5").mkdir(parents=True)
  (w / "config.json").write_text(json.dumps({"seed": 0}))      # a run config, not a model
  r = _convert("--from", w, "--to", tmp_path / "out")
  assert r.returncode == 1
  assert r.stderr.strip().startswith("error: ") and "without a final model" in r.stderr
  assert "model_type" not in r.stderr and "Traceback" not in r.stderr
  r = _convert("--from", src, "--to", w / "model")               # the runner's model/
  assert r.returncode == 0, r.stderr
  r = _convert("--from", w, "--to", tmp_path / "out")
  assert r.returncode == 0, r.stderr
  assert r.stdout.startswith("workdir ")
  _hf_dir_ok(tmp_path / "out", tok, model)


@pytest.mark.slow
def test_smollm2_gguf_to_hf_writes_the_tokenizer(tmp_path):
  pytest.importorskip("gguf", reason="needs pip install -e '.[real]'")
  path = tx._smollm2_gguf()
  out = tmp_path / "hf"
  r = _convert("--from", path, "--to", out, "--to_format", "hf")
  assert r.returncode == 0, r.stderr
  for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "generation_config.json"):
    assert _mode(out / name) == 0o644, name
  from prefjax.models import gguf
  from prefjax.tokenizers import Tokenizer
  tok = Tokenizer.from_gguf_meta(gguf._tokenizer_meta(gguf._open(path)), source=path)
  tx._check_tokenizer_dir(tok, str(out))
  gen = json.loads((out / "generation_config.json").read_text())
  assert gen["eos_token_id"] == sorted(tok.stop_ids) or gen["eos_token_id"] == tok.stop_ids[0]
