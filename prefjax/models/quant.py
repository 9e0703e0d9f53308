"""Blockwise symmetric quantisation of frozen weights (the base of QLoRA-style training).

A projection weight ``w [in..., out...]`` is cut into blocks of ``block`` consecutive values
along its flattened input (contracting) axes, K = prod(in...); each block of each output
column has its own float32 scale:

    s = max |w_block| / Q,     q = round(w / s) in [-Q, Q],     w ~ s * q,   |w - s q| <= s / 2

with Q = 127 for ``bits=8`` (int8, one byte per value) and Q = 7 for ``bits=4`` (a plain
symmetric int4, not NF4: two values per uint8, ``q + 8`` in the low nibble for even positions
of a block and the high nibble for odd ones). Bytes per weight: 1 + 4/block (int8) and
0.5 + 4/block (int4); the default block 64 gives 1.0625 and 0.5625 (GGUF's Q8_0 / Q4_0
use blocks of 32 with float16 scales).

A ``QuantizedWeight`` is a registered pytree (``values``, ``scales`` are its leaves; shape,
bits, block are static), so it can be the value of an ``nnx.Param``: the projections read
their weight with ``prefjax.models.layers.weight``, which dequantizes it where it is used,
inside the block. With ``ModelConfig.remat="block"`` the float copy of a layer's weights
then exists only while that block runs (forward, and again in its backward pass), never for
all layers at once. ``quantize_params`` quantizes the LoRA-targeted projections of a param
tree; embeddings, norms, biases and the output head stay as they are.

    qbase = quantize_params(params, bits=8, block=64)        # frozen base, ~1 byte/param
    model = nnx.merge(graphdef, qbase)                         # runs as is (dequantized per use)

Reference: Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs",
arXiv:2305.14314 (blockwise absmax quantisation of a frozen base under LoRA adapters).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prefjax.errors import ConfigError
from prefjax.models.lora import TARGETS

# bits -> the largest quantized magnitude Q (values lie in [-Q, Q]).
LEVELS = {8: 127, 4: 7}
# config name -> bits ("" = no quantisation).
FORMATS = {"int8": 8, "int4": 4}
DEFAULT_BLOCK = 64


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
  """A weight of ``shape`` with ``n_in`` leading input axes, quantized in blocks.

  values: int8 [nb, block, out...] (bits 8) or uint8 [nb, block // 2, out...] (bits 4,
    two values per byte), nb = prod(shape[:n_in]) // block.
  scales: float32 [nb, out...], one per block and output column.
  offsets: None (symmetric), or float32 [nb, out...] added to each block (w = s q + o): the
    asymmetric blocks of GGUF's Q4_1 (prefjax/models/gguf_quant.py); ``quantize`` makes none.
  A leading stacked-layer axis (``scan_layers``) may precede them; ``shape`` is one layer's.
  """
  values: jax.Array
  scales: jax.Array
  shape: tuple = dataclasses.field(metadata=dict(static=True))
  n_in: int = dataclasses.field(metadata=dict(static=True))
  bits: int = dataclasses.field(metadata=dict(static=True))
  block: int = dataclasses.field(metadata=dict(static=True))
  offsets: jax.Array | None = None

  def materialize(self, dtype):
    """The dequantized weight (``dequantize``) as a constant: the base is frozen."""
    return jax.lax.stop_gradient(dequantize(self, dtype))

  @property
  def nbytes(self) -> int:
    extra = 0 if self.offsets is None else self.offsets.nbytes
    return int(self.values.nbytes + self.scales.nbytes + extra)


def _check(shape, n_in: int, bits: int, block: int) -> int:
  """K = prod(shape[:n_in]) after checking that the format applies; ConfigError if not."""
  if bits not in LEVELS:
    raise ConfigError(f"quantisation bits must be one of {sorted(LEVELS)}, got {bits}")
  if block <= 0 or block % 2:
    raise ConfigError(f"quantisation block must be a positive even number, got {block}")
  k = int(np.prod(shape[:n_in]))
  if k % block:
    raise ConfigError(f"cannot quantize a weight of shape {tuple(shape)} in blocks of {block}: "
                      f"its input size {k} is not a multiple of the block")
  return k


def quantize(w, *, n_in: int = 1, bits: int = 8, block: int = DEFAULT_BLOCK) -> QuantizedWeight:
  """Blockwise absmax quantisation of ``w [in..., out...]`` along its ``n_in`` input axes.

  Args:
    w: float array; its first ``n_in`` axes are contracted with the input.
    bits: 8 (int8, Q = 127) or 4 (int4 packed two per byte, Q = 7).
    block: values per block along the flattened input axes (must divide their size).
  Returns:
    QuantizedWeight; ``dequantize`` gives back w within scale / 2 per element.
  """
  shape = tuple(w.shape)
  k = _check(shape, n_in, bits, block)
  out = shape[n_in:]
  q_max = LEVELS[bits]
  x = jnp.asarray(w, jnp.float32).reshape(k // block, block, *out)          # (nb, block, out...)
  scales = jnp.max(jnp.abs(x), axis=1) / q_max                              # (nb, out...)
  safe = jnp.where(scales == 0, 1.0, scales)                                # an all-zero block
  q = jnp.clip(jnp.round(x / safe[:, None]), -q_max, q_max).astype(jnp.int8)
  if bits == 4:
    u = (q + 8).astype(jnp.uint8)                                           # [1, 15]
    q = u[:, 0::2] | (u[:, 1::2] << 4)                                      # (nb, block/2, out...)
  return QuantizedWeight(values=q, scales=scales, shape=shape, n_in=n_in, bits=bits, block=block)


def dequantize(qw: QuantizedWeight, dtype=jnp.float32):
  """``scales * values`` reshaped to ``qw.shape`` (with any leading stacked axes), in ``dtype``."""
  lead = qw.scales.ndim - (1 + len(qw.shape) - qw.n_in)                   # stacked layer axes
  v = qw.values
  axis = lead + 1                                                            # the in-block axis
  if qw.bits == 4:
    lo = (v & 0xF).astype(jnp.int8) - 8
    hi = (v >> 4).astype(jnp.int8) - 8
    v = jnp.stack([lo, hi], axis=axis + 1)                                  # (..., block/2, 2, out)
    v = v.reshape(*v.shape[:axis], qw.block, *v.shape[axis + 2:])
  w = v.astype(jnp.float32) * jnp.expand_dims(qw.scales, axis)
  if qw.offsets is not None:
    w = w + jnp.expand_dims(qw.offsets, axis)
  return w.reshape(*qw.scales.shape[:lead], *qw.shape).astype(dtype)


def is_quantized(x) -> bool:
  return isinstance(x, QuantizedWeight)


def quantize_params(params, *, bits: int = 8, block: int = DEFAULT_BLOCK,
                    targets: Sequence[str] | None = None) -> dict:
  """``params`` with each block's targeted projections replaced by ``QuantizedWeight``s.

  ``targets`` are names of ``prefjax.models.lora.TARGETS`` (default: all seven projections);
  every other leaf (embeddings, norms, biases, the head) is returned as is. Each weight is
  quantized by one jitted call and the float input is not kept by the result.
  """
  targets = tuple(TARGETS) if targets is None else tuple(targets)
  bad = [t for t in targets if t not in TARGETS]
  if bad:
    raise ConfigError(f"quantize targets: unknown target {bad[0]!r}; valid: {', '.join(TARGETS)}")
  fns = {}
  out = dict(params)
  blocks = dict(params["blocks"])
  for i in sorted(blocks):
    block_params = {m: dict(v) if isinstance(v, dict) else v for m, v in blocks[i].items()}
    for t in targets:
      mod, name, n_in = TARGETS[t]
      w = block_params[mod][name]
      if is_quantized(w):
        continue
      _check(w.shape, n_in, bits, block)
      if n_in not in fns:
        fns[n_in] = jax.jit(lambda x, n=n_in: quantize(x, n_in=n, bits=bits, block=block))
      block_params[mod][name] = fns[n_in](w)
    blocks[i] = block_params
  out["blocks"] = blocks
  return out


def quantized_shardings(qparams, float_shardings):
  """Shardings for a ``quantize_params`` tree from those of the float tree it came from.

  A quantized weight keeps its output axes' placement; the first input axis's mesh axes go to
  its block axis when they divide the number of blocks, else to the values inside each block
  (scales then replicated along the input), else the input is replicated.
  """
  from jax.sharding import NamedSharding, PartitionSpec as P

  def one(leaf, sh):
    if not is_quantized(leaf):
      return sh
    spec = tuple(sh.spec) + (None,) * (len(leaf.shape) - len(sh.spec))
    in_spec, out_spec = spec[0], spec[leaf.n_in:]
    inner = None                       # mesh axes of the values inside each block
    if in_spec is not None:
      axes = (in_spec,) if isinstance(in_spec, str) else tuple(in_spec)
      size = int(np.prod([sh.mesh.shape[a] for a in axes]))
      if leaf.scales.shape[0] % size:
        if leaf.values.shape[1] % size == 0:
          inner = in_spec
        in_spec = None
    per_block = NamedSharding(sh.mesh, P(in_spec, *out_spec))
    return QuantizedWeight(values=NamedSharding(sh.mesh, P(in_spec, inner, *out_spec)),
                           scales=per_block, shape=leaf.shape, n_in=leaf.n_in, bits=leaf.bits,
                           block=leaf.block,
                           offsets=None if leaf.offsets is None else per_block)

  return jax.tree.map(one, qparams, float_shardings, is_leaf=is_quantized)


def base_bytes(params) -> tuple[int, int]:
  """(bytes, parameters) of the projections of ``params`` that ``quantize_params`` targets
  or has quantized: a quantized weight counts its values and scales, a float one its array."""
  nbytes = count = 0
  for block_params in params["blocks"].values():
    for mod, name, _ in TARGETS.values():
      w = block_params.get(mod, {}).get(name)
      if w is None:
        continue
      nbytes += int(w.nbytes)
      count += int(np.prod(w.shape))
  return nbytes, count


def bytes_per_param(params) -> float:
  """Bytes per parameter of the quantizable projections of ``params`` (``base_bytes``)."""
  nbytes, count = base_bytes(params)
  return nbytes / max(count, 1)
