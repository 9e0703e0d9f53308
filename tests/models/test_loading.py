"""load_model dispatch and the HF <-> prefjax checkpoint conversion (scripts/convert.py)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
transformers = pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")

import jax.numpy as jnp
from flax import nnx

from prefjax.errors import DataError
from prefjax.models import hf, loading


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  torch.manual_seed(0)
  cfg = transformers.Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, tie_word_embeddings=False)
  path = str(tmp_path_factory.mktemp("hf") / "qwen2")
  transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
  return path


def _logits(graphdef, params):
  tokens = jnp.asarray(np.arange(20, dtype=np.int32).reshape(2, 10) * 7 % 128)
  pos = jnp.tile(jnp.arange(10), (2, 1))
  return np.asarray(nnx.merge(graphdef, params)(tokens, pos, jnp.ones_like(tokens))[0])


def test_hf_to_prefjax_to_hf(hf_dir, tmp_path):
  cfg, graphdef, params, tok = loading.load_model(hf_dir)
  assert loading.source_kind(hf_dir) == "hf" and tok is None
  ref = _logits(graphdef, params)
  ckpt = str(tmp_path / "ckpt")
  loading.save_checkpoint(ckpt, cfg, params)
  assert loading.source_kind(ckpt) == "prefjax"
  cfg2, graphdef2, params2, _ = loading.load_model(ckpt)
  assert cfg2 == cfg
  np.testing.assert_array_equal(_logits(graphdef2, params2), ref)
  out = str(tmp_path / "hf_again")
  hf.save_hf_dir(out, cfg2, params2)
  cfg3, graphdef3, params3, _ = loading.load_model(out)
  assert cfg3 == cfg
  np.testing.assert_array_equal(_logits(graphdef3, params3), ref)


def test_unknown_source_and_missing_gguf_reader(tmp_path):
  with pytest.raises(DataError, match="not a model"):
    loading.source_kind(str(tmp_path))
  fn = tmp_path / "m.gguf"
  fn.write_bytes(b"GGUF")
  pytest.importorskip("gguf", reason="needs pip install -e '.[real]'")
  with pytest.raises(DataError, match="m.gguf"):   # a 4-byte "GGUF": one line naming it
    loading.load_model(str(fn))
