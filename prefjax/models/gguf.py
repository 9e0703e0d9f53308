"""Reading llama.cpp GGUF checkpoints into HF-named float arrays, an HF config and tokenizer data.

    hf_config, state_dict, tokenizer_meta = read_gguf("model.gguf")
    cfg, graphdef, params, tokenizer = load_gguf("model.gguf")

Every tensor type the ``gguf`` package can dequantize (F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0,
the K-quants, IQ types) becomes float32 numpy (bfloat16 on request). Tensor names are mapped
from llama.cpp's (``blk.N.attn_q``) to transformers' (``model.layers.N.self_attn.q_proj``),
and two conversions that llama.cpp's ``convert_hf_to_gguf.py`` applies are undone, exactly as
transformers' ``modeling_gguf_pytorch_utils.py`` undoes them:

* Llama-architecture files: the rows of ``attn_q``/``attn_k`` are permuted per head from the
  HF "rotate_half" RoPE layout to GGML's interleaved one,
  ``w.reshape(H, 2, K/2, D).swapaxes(1, 2)``; the inverse is
  ``w.reshape(H, K/2, 2, D).swapaxes(1, 2)`` (H = query heads for q, kv heads for k).
* Gemma 2/3 files: every ``*norm.weight`` is stored as ``1 + w`` (Gemma's RMSNorm multiplies by
  ``1 + w``); transformers subtracts 1 from every tensor whose name contains ``norm.weight``.

A file that is truncated, corrupt or of an unsupported architecture raises ``DataError`` with
one line naming the file and the problem; nothing is returned until every tensor has been read.
"""
from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from prefjax.extras import require
from prefjax.errors import DataError
from prefjax.models import hf as hf_lib
from prefjax.tokenizers import Tokenizer

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")
_GEMMA = ("gemma2", "gemma3")

# llama.cpp block tensor name -> transformers name (after "model.layers.N.").
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
# The norm after attention / around the MLP: Llama-style blocks have one pre-MLP norm, Gemma 2/3
# blocks have four (pre/post attention, pre/post feed-forward).
_BLOCK_NORMS = {
    "default": {"ffn_norm": "post_attention_layernorm"},
    "gemma": {"post_attention_norm": "post_attention_layernorm",
              "ffn_norm": "pre_feedforward_layernorm",
              "post_ffw_norm": "post_feedforward_layernorm"},
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}
_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                "gemma2": "gemma2", "gemma3": "gemma3_text"}
_HF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                     "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                     "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
_TOKENIZER_KEYS = {
    "model": "tokenizer.ggml.model", "pre": "tokenizer.ggml.pre",
    "tokens": "tokenizer.ggml.tokens", "token_type": "tokenizer.ggml.token_type",
    "scores": "tokenizer.ggml.scores", "merges": "tokenizer.ggml.merges",
    "bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_id": "tokenizer.ggml.eos_token_id",
    "unk_token_id": "tokenizer.ggml.unknown_token_id",
    "pad_token_id": "tokenizer.ggml.padding_token_id",
    "add_bos_token": "tokenizer.ggml.add_bos_token",
    "add_eos_token": "tokenizer.ggml.add_eos_token",
    "add_space_prefix": "tokenizer.ggml.add_space_prefix",
    "chat_template": "tokenizer.chat_template",
}


def hf_tensor_name(gguf_name: str, arch: str) -> str | None:
  """The transformers parameter name of a llama.cpp tensor, or None for unknown tensors."""
  base, _, suffix = gguf_name.rpartition(".")
  if suffix not in ("weight", "bias"):
    return None
  m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
  if m:
    table = dict(_BLOCK_NAMES, **_BLOCK_NORMS["gemma" if arch in _GEMMA else "default"])
    hf = table.get(m.group(2))
    return None if hf is None else f"model.layers.{m.group(1)}.{hf}.{suffix}"
  hf = _TOP_NAMES.get(base)
  return None if hf is None else f"{hf}.{suffix}"


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's q/k row permutation: GGML interleaved RoPE -> HF rotate_half.

  Args:
    w: [H * K, D] (or [H * K] for a bias) rows as stored in the GGUF.
    n_heads: H, the number of heads the rows hold (kv heads for ``attn_k``).
  Returns:
    The same shape, rows in transformers' order.
  """
  half = w.shape[0] // n_heads // 2
  return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  v = f.contents()
  return v


def _hf_config(reader, arch: str, tensor_names: set[str], path: str) -> dict[str, Any]:
  """The HF ``config.json`` dict a transformers checkpoint of this file would carry."""
  def need(key):
    v = _field(reader, f"{arch}.{key}")
    if v is None:
      raise DataError(f"{path}: GGUF metadata lacks {arch}.{key}")
    return v

  def opt(key, default=None):
    return _field(reader, f"{arch}.{key}", default)

  hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
  kv_heads = opt("attention.head_count_kv", heads)
  if isinstance(kv_heads, list):
    kv_heads = max(kv_heads)
  tokens = _field(reader, "tokenizer.ggml.tokens")
  vocab = opt("vocab_size", len(tokens) if tokens is not None else None)
  if vocab is None:
    raise DataError(f"{path}: GGUF metadata gives no vocab size ({arch}.vocab_size or tokens)")
  head_dim = opt("attention.key_length") or opt("rope.dimension_count") or hidden // heads
  cfg = {
      "model_type": _MODEL_TYPES[arch],
      "architectures": [_HF_ARCHITECTURES[arch]],
      "vocab_size": int(vocab),
      "hidden_size": hidden,
      "intermediate_size": int(need("feed_forward_length")),
      "num_hidden_layers": int(need("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(kv_heads),
      "head_dim": int(head_dim),
      "max_position_embeddings": int(opt("context_length", 2048)),
      "rope_theta": float(opt("rope.freq_base", 10000.0)),
      "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
      "tie_word_embeddings": "output.weight" not in tensor_names,
      "hidden_act": "gelu_pytorch_tanh" if arch in _GEMMA else "silu",
      "torch_dtype": "float32",
  }
  for k, key in (("bos_token_id", "tokenizer.ggml.bos_token_id"),
                 ("eos_token_id", "tokenizer.ggml.eos_token_id"),
                 ("pad_token_id", "tokenizer.ggml.padding_token_id")):
    v = _field(reader, key)
    if v is not None:
      cfg[k] = int(v)
  if arch in ("qwen2",):
    cfg["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
  if arch in _GEMMA:
    # What GGUF does not store takes Gemma's config defaults, as transformers does:
    # query scale 1/sqrt(head_dim), local (sliding) RoPE base 10000, 5 sliding : 1 global.
    cfg["sliding_window"] = int(opt("attention.sliding_window", 4096))
    cfg["query_pre_attn_scalar"] = int(head_dim)
    cfg["final_logit_softcapping"] = opt("final_logit_softcapping")
    cfg["attn_logit_softcapping"] = opt("attn_logit_softcapping")
  if arch == "gemma3":
    cfg["rope_local_base_freq"] = float(opt("rope.freq_base_swa", 10000.0))
    cfg["sliding_window_pattern"] = 6
    cfg["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                          for i in range(cfg["num_hidden_layers"])]
    cfg["rope_scaling"] = None
  return cfg


def _tokenizer_meta(reader) -> dict[str, Any]:
  meta = {k: _field(reader, key) for k, key in _TOKENIZER_KEYS.items()}
  meta["architecture"] = _field(reader, "general.architecture")
  return {k: v for k, v in meta.items() if v is not None}


def _open(path: str):
  if not os.path.isfile(path):      # the path first: a typo is not a missing extra
    raise DataError(f"{path}: no such GGUF file")
  gguf = require("gguf", "real", "reading a GGUF checkpoint")   # only GGUF users need it
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # the package raises ValueError/struct.error/IndexError/...
    raise DataError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
  size = os.path.getsize(path)
  for t in reader.tensors:
    end = int(t.data_offset) + int(t.n_bytes)
    if end > size or t.data.size * t.data.itemsize != int(t.n_bytes):
      raise DataError(f"{path}: truncated GGUF file: tensor {t.name} ends at byte {end} but the "
                      f"file has {size} bytes")
  return reader


def row_map(name: str, arch: str, hf_config):
  """The map of a tensor's [out, ...] rows back to transformers' order: the q/k RoPE
  un-permutation of Llama-architecture files, else None."""
  if arch in ("llama", "mistral") and name.rsplit(".", 2)[-2] in ("attn_q", "attn_k"):
    heads = hf_config["num_attention_heads"]
    if ".attn_k." in name:
      heads = hf_config["num_key_value_heads"]
    return lambda w: unpermute_rope_rows(w, heads)
  return None


def read_tensor(t, arch: str, hf_config, path: str = "") -> np.ndarray:
  """One GGUF tensor as float32 numpy in transformers' layout and conventions."""
  gguf = require("gguf", "real", "reading a GGUF checkpoint")
  try:
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
  except Exception as e:
    raise DataError(f"{path}: cannot dequantize tensor {t.name} of type "
                    f"{getattr(t.tensor_type, 'name', t.tensor_type)} ({e})") from None
  expect = tuple(int(s) for s in reversed(t.shape))  # GGUF lists dims innermost first
  if w.shape != expect:
    raise DataError(f"{path}: tensor {t.name} dequantized to {w.shape}, header says {expect}")
  if not np.all(np.isfinite(w)):
    raise DataError(f"{path}: tensor {t.name} holds non-finite values (corrupted file?)")
  rows = row_map(t.name, arch, hf_config)
  if rows is not None:
    w = rows(w)
  if arch in _GEMMA and "norm.weight" in t.name:
    w = w - 1.0
  return w


def read_gguf(path: str, *, dtype=None, skip=None):
  """Reads a GGUF checkpoint.

  Args:
    path: a ``*.gguf`` file.
    dtype: ``None``/"float32" (default) or "bfloat16" for the returned arrays.
    skip: optional predicate on the gguf package's tensors: those it accepts are left out of
      the state dict (``prefjax.models.gguf_quant`` reads them itself).
  Returns:
    (hf_config, state_dict, tokenizer_meta): the transformers config dict; {HF name: array}
    with HF layouts (``[out, in]`` for projections); the tokenizer metadata (``tokens``,
    ``token_type``, ``merges``/``scores``, ``model``, ``pre``, special ids, ``add_bos_token``,
    ``chat_template``).
  Raises:
    DataError: unreadable, truncated or corrupted file, unknown tensor type, unsupported
      architecture. No partial result is ever returned.
  """
  path = os.fspath(path)
  reader = _open(path)
  arch = _field(reader, "general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise DataError(f"{path}: unsupported GGUF architecture {arch!r}; supported: "
                    f"{', '.join(SUPPORTED_ARCHITECTURES)}")
  names = {t.name for t in reader.tensors}
  hf_config = _hf_config(reader, arch, names, path)
  out_dtype = np.float32
  if dtype is not None and np.dtype(dtype) != np.float32:
    import ml_dtypes
    if str(dtype) != "bfloat16":
      raise DataError(f"{path}: dtype must be float32 or bfloat16, got {dtype!r}")
    out_dtype = ml_dtypes.bfloat16
  state: dict[str, np.ndarray] = {}
  for t in reader.tensors:
    hf = hf_tensor_name(t.name, arch)
    if hf is None:
      raise DataError(f"{path}: tensor {t.name!r} has no transformers name for {arch}")
    if skip is not None and skip(t):
      continue
    state[hf] = read_tensor(t, arch, hf_config, path).astype(out_dtype)
  return hf_config, state, _tokenizer_meta(reader)


def load_gguf(path: str, *, mesh=None, dtype=None, compute_dtype=None):
  """(cfg, graphdef, params, tokenizer) for a GGUF checkpoint, via ``prefjax.models.hf``.

  The weights go through ``params_from_hf`` (the HF-checkpoint path), so a GGUF and the
  transformers checkpoint it was converted from give the same model.

  Args:
    path: a ``*.gguf`` file.
    mesh: optional mesh; parameters land sharded by the rule table.
    dtype: parameter dtype (default float32); compute_dtype: activation dtype.
  """
  hf_config, state, tok_meta = read_gguf(path)
  over = {}
  if dtype is not None:
    over["param_dtype"] = str(dtype)
  if compute_dtype is not None:
    over["dtype"] = str(compute_dtype)
  cfg = hf_lib.config_from_hf(hf_config, **over)
  params = hf_lib.params_from_hf(state, cfg, mesh=mesh)
  graphdef, _ = hf_lib.abstract_params(cfg)
  return cfg, graphdef, params, Tokenizer.from_gguf_meta(tok_meta, source=str(path))
