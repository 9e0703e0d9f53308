"""Hugging Face tensor names and layouts <-> prefjax parameter trees.

Two checkpoint layouts cover the supported families:

* Llama-like (``model.layers.{i}.self_attn.q_proj.weight`` ...): Linear weights are
  [out, in]; q/k/v/o are reshaped to prefjax's per-head (D, H, K) / (H, K, D). Gemma's
  ``post_attention_layernorm`` is a post-norm (Llama's is the pre-MLP norm).
* GPT-2 (``transformer.h.{i}.attn.c_attn.weight`` ...): Conv1D weights are already
  [in, out]; the fused ``c_attn`` splits into q, k, v.

Both directions are tensor-by-tensor so a large checkpoint streams onto the mesh.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from prefjax.errors import DataError
from prefjax.models.config import ModelConfig
from prefjax.models.quant import quantized_shardings
from prefjax.models.transformer import Transformer
from prefjax.sharding import DEFAULT_RULES, logical_to_spec

Path = tuple  # a key path into the pure params dict, e.g. ("blocks", 0, "attn", "q")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor: its name and shape, the prefjax params it fills, and the two maps."""
  name: str
  shape: tuple[int, ...]
  targets: tuple[Path, ...]
  load: Callable[[np.ndarray], Sequence[np.ndarray]]    # HF array -> prefjax arrays
  save: Callable[..., np.ndarray]                       # prefjax arrays -> HF array


def _same(name, shape, target):
  return Entry(name, tuple(shape), (target,), lambda w: (w,), lambda w: w)


def _linear(name, d_in, d_out, target):
  """nn.Linear [out, in] <-> prefjax [in, out]."""
  return Entry(name, (d_out, d_in), (target,), lambda w: (w.T,), lambda w: w.T)


def _heads_in(name, d, h, k, target):
  """q/k/v proj [H*K, D] <-> (D, H, K)."""
  return Entry(name, (h * k, d), (target,), lambda w: (w.reshape(h, k, d).transpose(2, 0, 1),),
               lambda w: w.transpose(1, 2, 0).reshape(h * k, d))


def _heads_out(name, d, h, k, target):
  """o proj [D, H*K] <-> (H, K, D)."""
  return Entry(name, (d, h * k), (target,), lambda w: (w.T.reshape(h, k, d),),
               lambda w: w.reshape(h * k, d).T)


def _head_bias(name, h, k, target):
  return Entry(name, (h * k,), (target,), lambda b: (b.reshape(h, k),), lambda b: b.reshape(-1))


def llama_entries(cfg: ModelConfig) -> list[Entry]:
  """Llama / Mistral / Qwen2 / Qwen3 / Gemma 2 / Gemma 3 tensor names."""
  d, h, g, k, f = cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
  out = [_same("model.embed_tokens.weight", (cfg.vocab_size, d), ("embed",)),
         _same("model.norm.weight", (d,), ("final_norm", "scale"))]
  if not cfg.tie_embeddings:
    out.append(_linear("lm_head.weight", d, cfg.vocab_size, ("unembed",)))
  for i in range(cfg.n_layers):
    p, b = f"model.layers.{i}.", ("blocks", i)
    a = b + ("attn",)
    out += [_heads_in(p + "self_attn.q_proj.weight", d, h, k, a + ("q",)),
            _heads_in(p + "self_attn.k_proj.weight", d, g, k, a + ("k",)),
            _heads_in(p + "self_attn.v_proj.weight", d, g, k, a + ("v",)),
            _heads_out(p + "self_attn.o_proj.weight", d, h, k, a + ("o",)),
            _same(p + "input_layernorm.weight", (d,), b + ("attn_norm", "scale"))]
    if cfg.qkv_bias:
      out += [_head_bias(p + "self_attn.q_proj.bias", h, k, a + ("q_bias",)),
              _head_bias(p + "self_attn.k_proj.bias", g, k, a + ("k_bias",)),
              _head_bias(p + "self_attn.v_proj.bias", g, k, a + ("v_bias",))]
    if cfg.out_bias:
      out.append(_same(p + "self_attn.o_proj.bias", (d,), a + ("o_bias",)))
    if cfg.qk_norm:
      out += [_same(p + "self_attn.q_norm.weight", (k,), a + ("q_norm", "scale")),
              _same(p + "self_attn.k_norm.weight", (k,), a + ("k_norm", "scale"))]
    if cfg.post_norms:
      out += [_same(p + "post_attention_layernorm.weight", (d,), b + ("post_attn_norm", "scale")),
              _same(p + "pre_feedforward_layernorm.weight", (d,), b + ("mlp_norm", "scale")),
              _same(p + "post_feedforward_layernorm.weight", (d,), b + ("post_mlp_norm", "scale"))]
    else:
      out.append(_same(p + "post_attention_layernorm.weight", (d,), b + ("mlp_norm", "scale")))
    m = b + ("mlp",)
    out += [_linear(p + "mlp.gate_proj.weight", d, f, m + ("gate",)),
            _linear(p + "mlp.up_proj.weight", d, f, m + ("up",)),
            _linear(p + "mlp.down_proj.weight", f, d, m + ("down",))]
    if cfg.mlp_bias:
      out += [_same(p + "mlp.gate_proj.bias", (f,), m + ("gate_bias",)),
              _same(p + "mlp.up_proj.bias", (f,), m + ("up_bias",)),
              _same(p + "mlp.down_proj.bias", (d,), m + ("down_bias",))]
  return out


def gpt2_entries(cfg: ModelConfig, prefix: str = "transformer.") -> list[Entry]:
  """GPT-2 tensor names (Conv1D weights are [in, out]; c_attn is q|k|v fused)."""
  d, h, k, f = cfg.dim, cfg.n_heads, cfg.head_dim, cfg.mlp_dim
  hk = h * k
  out = [_same(prefix + "wte.weight", (cfg.vocab_size, d), ("embed",)),
         _same(prefix + "wpe.weight", (cfg.max_len, d), ("pos_embed",)),
         _same(prefix + "ln_f.weight", (d,), ("final_norm", "scale")),
         _same(prefix + "ln_f.bias", (d,), ("final_norm", "bias"))]
  if not cfg.tie_embeddings:
    out.append(_linear("lm_head.weight", d, cfg.vocab_size, ("unembed",)))
  for i in range(cfg.n_layers):
    p, b = f"{prefix}h.{i}.", ("blocks", i)
    a, m = b + ("attn",), b + ("mlp",)
    out += [
        Entry(p + "attn.c_attn.weight", (d, 3 * hk), (a + ("q",), a + ("k",), a + ("v",)),
              lambda w: tuple(w[:, j * hk:(j + 1) * hk].reshape(d, h, k) for j in range(3)),
              lambda *qkv: np.concatenate([x.reshape(d, hk) for x in qkv], axis=1)),
        Entry(p + "attn.c_attn.bias", (3 * hk,), (a + ("q_bias",), a + ("k_bias",), a + ("v_bias",)),
              lambda w: tuple(w[j * hk:(j + 1) * hk].reshape(h, k) for j in range(3)),
              lambda *qkv: np.concatenate([x.reshape(hk) for x in qkv])),
        Entry(p + "attn.c_proj.weight", (hk, d), (a + ("o",),), lambda w: (w.reshape(h, k, d),),
              lambda w: w.reshape(hk, d)),
        _same(p + "attn.c_proj.bias", (d,), a + ("o_bias",)),
        _same(p + "ln_1.weight", (d,), b + ("attn_norm", "scale")),
        _same(p + "ln_1.bias", (d,), b + ("attn_norm", "bias")),
        _same(p + "ln_2.weight", (d,), b + ("mlp_norm", "scale")),
        _same(p + "ln_2.bias", (d,), b + ("mlp_norm", "bias")),
        _same(p + "mlp.c_fc.weight", (d, f), m + ("up",)),
        _same(p + "mlp.c_fc.bias", (f,), m + ("up_bias",)),
        _same(p + "mlp.c_proj.weight", (f, d), m + ("down",)),
        _same(p + "mlp.c_proj.bias", (d,), m + ("down_bias",))]
  return out


def hf_entries(cfg: ModelConfig, names: Sequence[str] = ()) -> tuple[list[Entry], Callable]:
  """The entries for ``cfg`` and a predicate for checkpoint names that may be ignored.

  ``names`` (the checkpoint's tensor names) picks GPT-2's optional ``transformer.`` prefix.
  """
  if cfg.pos_emb == "learned":
    prefix = "transformer." if any(n.startswith("transformer.") for n in names) or not names else ""
    entries = gpt2_entries(cfg, prefix)
    # Old GPT-2 checkpoints store the causal-mask buffers; a tied lm_head may be duplicated.
    ignore = lambda n: n.endswith((".attn.bias", ".attn.masked_bias")) or (
        cfg.tie_embeddings and n == "lm_head.weight")
  else:
    entries = llama_entries(cfg)
    ignore = lambda n: (cfg.tie_embeddings and n == "lm_head.weight") or n.endswith(
        "rotary_emb.inv_freq")
  return entries, ignore


def _get(tree, path):
  for p in path:
    tree = tree[p]
  return tree


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def abstract_params(cfg: ModelConfig):
  """(graphdef, {path: (shape, dtype, logical_axes)}) without allocating weights."""
  model = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  leaves = {}
  for path, var in nnx.to_flat_state(state):
    value = var.get_value()
    leaves[tuple(path)] = (tuple(value.shape), value.dtype, getattr(var, "logical_axes", None))
  return graphdef, leaves


def _is_float(dtype) -> bool:
  return np.dtype(dtype).kind == "f" or str(dtype) == "bfloat16"


def params_from_hf(state_dict: Mapping[str, Any], cfg: ModelConfig, *, mesh=None, dtype=None,
                   rules=DEFAULT_RULES, given: Mapping[str, Any] | None = None) -> dict:
  """A pure params dict for ``Transformer(cfg)`` from HF-named tensors.

  Tensors are read one at a time (``state_dict`` may be a lazy Mapping, e.g. the one
  ``open_safetensors`` returns), checked, converted, cast to ``dtype`` (default
  ``cfg.param_dtype``) and placed with ``jax.device_put(x, NamedSharding)`` under
  ``mesh``'s rule table (default device without a mesh).

  ``given``: HF names whose prefjax parameter the caller has built already, in prefjax layout
  (e.g. a ``QuantizedWeight`` read from a GGUF's own blocks, prefjax/models/gguf_quant.py);
  each is placed as it is (under ``mesh``, by ``quant.quantized_shardings`` of the rule
  table's sharding of its shape).

  Raises:
    DataError naming the tensor: a missing or unexpected tensor, a wrong shape, a
    non-floating dtype.
  """
  given = dict(given or {})
  names = list(state_dict.keys()) + [n for n in given if n not in state_dict]
  entries, ignorable = hf_entries(cfg, names)
  _, leaves = abstract_params(cfg)
  dtype = jnp.dtype(dtype or cfg.param_dtype)
  known = {e.name for e in entries}
  unexpected = [n for n in names if n not in known and not ignorable(n)]
  if unexpected:
    raise DataError(f"unexpected tensor {unexpected[0]!r} in the checkpoint for this config "
                    f"({len(unexpected)} unexpected in all)")
  missing = [e.name for e in entries if e.name not in state_dict and e.name not in given]
  if missing:
    raise DataError(f"tensor {missing[0]!r} is missing from the checkpoint "
                    f"({len(missing)} missing in all)")
  params: dict = {}
  for e in entries:
    if e.name in given:
      _place_given(params, e, given[e.name], leaves, mesh, rules)
      continue
    w = state_dict[e.name]
    shape = tuple(w.shape)
    if shape != e.shape:
      raise DataError(f"tensor {e.name!r} has shape {shape} in the checkpoint, expected "
                      f"{e.shape} from the config")
    if not _is_float(w.dtype):
      raise DataError(f"tensor {e.name!r} has dtype {w.dtype}, expected a floating type")
    w = np.asarray(w)
    if str(w.dtype) in ("bfloat16", "float16"):
      w = w.astype(np.float32)      # exact; the transforms below are layout-only
    for path, x in zip(e.targets, e.load(w)):
      want_shape, _, axes = leaves[path]
      assert x.shape == want_shape, (e.name, path, x.shape, want_shape)
      x = np.ascontiguousarray(x).astype(dtype)
      if mesh is not None:
        spec = logical_to_spec(axes or (None,) * x.ndim, x.shape, mesh, rules)
        _set(params, path, jax.device_put(x, NamedSharding(mesh, spec)))
      else:
        _set(params, path, jax.device_put(x))
  left = [p for p in leaves if not _has(params, p)]
  if left:
    raise DataError(f"no checkpoint tensor fills parameter {'.'.join(map(str, left[0]))}")
  return params


def _place_given(params, e: Entry, value, leaves, mesh, rules):
  """Puts a caller-built parameter (see ``params_from_hf``'s ``given``) at the entry's target."""
  (path,) = e.targets
  want_shape, _, axes = leaves[path]
  if tuple(value.shape) != tuple(want_shape):
    raise DataError(f"tensor {e.name!r} was given with shape {tuple(value.shape)}, expected "
                    f"{want_shape}")
  if mesh is None:
    _set(params, path, jax.device_put(value))
    return
  sh = NamedSharding(mesh, logical_to_spec(axes or (None,) * len(want_shape), want_shape, mesh,
                                           rules))
  _set(params, path, jax.device_put(value, quantized_shardings(value, sh)))


def _has(tree, path) -> bool:
  try:
    _get(tree, path)
    return True
  except (KeyError, TypeError):
    return False


def params_to_hf(params, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, numpy array) pairs for a prefjax params dict, one tensor at a time."""
  entries, _ = hf_entries(cfg)
  for e in entries:
    arrays = [np.asarray(jax.device_get(_get(params, p)), dtype=np.float32)
              if str(_get(params, p).dtype) == "bfloat16"
              else np.asarray(jax.device_get(_get(params, p))) for p in e.targets]
    yield e.name, np.ascontiguousarray(e.save(*arrays))
