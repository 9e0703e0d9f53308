"""A GGUF's own quantized projections (Q8_0, Q4_0, Q4_1) read as ``QuantizedWeight``s.

llama.cpp stores a projection as rows of its output axis ([out, in], the HF layout), each row
cut into blocks of 32 input values, each block one float16 scale d (and, for Q4_1, a float16
minimum m) followed by its quantized values:

  Q8_0  34 bytes: d, 32 int8 q                       w = d q
  Q4_0  18 bytes: d, 16 bytes of nibbles             w = d (n - 8),   n in [0, 15]
  Q4_1  20 bytes: d, m, 16 bytes of nibbles          w = d n + m
  (byte j holds element j in its low nibble and element j + 16 in its high nibble)

These are prefjax's blockwise formats (prefjax/models/quant.py) with block 32: Q8_0 is its int8,
Q4_0 its int4 (whose nibbles also decode as n - 8), Q4_1 its int4 plus a per-block offset
o = m + 8 d. ``load_gguf_quantized`` reads every projection stored in one of these types
straight into that format (the bytes are re-laid out; no float copy of the weight is made,
scales and offsets become float32) and every other tensor as ``gguf.load_gguf`` does, so the
model runs on the file's own quantized weights: ``dequantize`` of a weight equals the gguf
package's ``dequantize`` of the tensor (float16 scales widened to float32 exactly; Q4_1's
offset m + 8 d rounds once in float32). Llama q/k rows are un-permuted as ``gguf.py`` does it
(the permutation moves whole rows, so it applies to the blocks as they are).

    cfg, graphdef, params, tokenizer = load_gguf_quantized("model.Q4_1.gguf")
    # params["blocks"][i]["attn"]["q"] is a QuantizedWeight (bits 4, block 32, offsets)
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from prefjax.models import gguf as gguf_lib
from prefjax.models import hf as hf_lib
from prefjax.models.hf_weights import hf_entries
from prefjax.models.lora import TARGETS
from prefjax.models.quant import QuantizedWeight
from prefjax.tokenizers import Tokenizer

GGML_BLOCK = 32


def _f16(raw, lo: int) -> np.ndarray:
  """The float16 at bytes [lo, lo + 2) of every block, as float32: [rows, nb]."""
  return np.ascontiguousarray(raw[..., lo:lo + 2]).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(qs) -> np.ndarray:
  """GGML's nibble order (byte j: elements j and j + 16) -> prefjax's (byte j: 2j and 2j + 1)."""
  el = np.concatenate([qs & 0xF, qs >> 4], axis=-1)                       # [..., 32] in order
  return (el[..., 0::2] | (el[..., 1::2] << 4)).astype(np.uint8)


def _q8_0(raw):
  return np.ascontiguousarray(raw[..., 2:]).view(np.int8), _f16(raw, 0), None


def _q4_0(raw):
  return _nibbles(raw[..., 2:]), _f16(raw, 0), None


def _q4_1(raw):
  d, m = _f16(raw, 0), _f16(raw, 2)
  return _nibbles(raw[..., 4:]), d, m + 8.0 * d


# GGML type name -> (bits, bytes per block, raw [rows, nb, bytes] -> (values, scales, offsets))
FORMATS: dict[str, tuple[int, int, Callable]] = {
    "Q8_0": (8, 34, _q8_0), "Q4_0": (4, 18, _q4_0), "Q4_1": (4, 20, _q4_1)}


def quantized_from_gguf(data: np.ndarray, type_name: str, shape, n_in: int,
                        rows: Callable[[np.ndarray], np.ndarray] | None = None) -> QuantizedWeight:
  """One GGUF tensor's blocks as a ``QuantizedWeight`` of prefjax ``shape``.

  Args:
    data: the tensor's bytes as the gguf package reads them: uint8 [out, bytes per row].
    type_name: "Q8_0", "Q4_0" or "Q4_1".
    shape: the prefjax parameter's shape [in..., out...] (its ``n_in`` input axes flatten
      to the GGUF row length, its output axes to the number of rows).
    rows: optional map of the [out, ...] row axis (the q/k RoPE un-permutation).
  """
  bits, nbytes, decode = FORMATS[type_name]
  out = data.shape[0]
  raw = np.asarray(data).reshape(out, -1, nbytes)                          # (out, nb, bytes)
  if rows is not None:
    raw = rows(raw)
  nb = raw.shape[1]
  if nb * GGML_BLOCK != int(np.prod(shape[:n_in])) or out != int(np.prod(shape[n_in:])):
    raise ValueError(f"{type_name} tensor of {out} rows x {nb * GGML_BLOCK} does not fit {shape}")
  values, scales, offsets = decode(raw)                  # (out, nb, bb), (out, nb), same or None
  to_blocks = lambda x: np.moveaxis(x, 0, -1).reshape(*x.shape[1:], *shape[n_in:])
  return QuantizedWeight(
      values=jnp.asarray(to_blocks(values)), scales=jnp.asarray(to_blocks(scales)),
      shape=tuple(shape), n_in=n_in, bits=bits, block=GGML_BLOCK,
      offsets=None if offsets is None else jnp.asarray(to_blocks(offsets)))


def _targets(cfg) -> dict[str, tuple[tuple, int]]:
  """HF projection name -> (prefjax path, n_in) for the LoRA-targetable projections."""
  entries, _ = hf_entries(cfg)
  by_path = {(mod, name): n_in for mod, name, n_in in TARGETS.values()}
  out = {}
  for e in entries:
    (path,) = e.targets if len(e.targets) == 1 else (None,)
    if path is not None and len(path) == 4 and (path[2], path[3]) in by_path:
      out[e.name] = (path, by_path[(path[2], path[3])])
  return out


def load_gguf_quantized(path: str, *, mesh=None):
  """(cfg, graphdef, params, tokenizer) with the file's Q8_0 / Q4_0 / Q4_1 projections kept
  quantized (``QuantizedWeight``) and every other tensor read as ``gguf.load_gguf`` does."""
  reader = gguf_lib._open(path)
  arch = gguf_lib._field(reader, "general.architecture")
  hf_names = {t.name: gguf_lib.hf_tensor_name(t.name, arch) for t in reader.tensors}
  hf_config, state, tok_meta = gguf_lib.read_gguf(
      path, skip=lambda t: t.tensor_type.name in FORMATS)
  cfg = hf_lib.config_from_hf(hf_config)
  targets = _targets(cfg)
  _, leaves = hf_lib.abstract_params(cfg)
  given = {}
  for t in reader.tensors:
    name = hf_names[t.name]
    if t.tensor_type.name not in FORMATS:
      continue
    if name not in targets:     # a quantized tensor that is not a projection: read as float
      state[name] = gguf_lib.read_tensor(t, arch, hf_config, path)
      continue
    p, n_in = targets[name]
    given[name] = quantized_from_gguf(t.data, t.tensor_type.name, leaves[p][0], n_in,
                                      rows=gguf_lib.row_map(t.name, arch, hf_config))
  params = hf_lib.params_from_hf(state, cfg, mesh=mesh, given=given)
  graphdef, _ = hf_lib.abstract_params(cfg)
  return cfg, graphdef, params, Tokenizer.from_gguf_meta(tok_meta, source=str(path))
