"""Low-rank adapters (LoRA) on the projections of a prefjax ``Transformer``.

    W' = W + (alpha / r) * A @ B,   A ~ N(0, 1/fan_in) [in..., r],  B = 0 [r, out...]

so the adapted model equals the base model at initialisation. ``in...`` are the axes a
projection contracts with its input: ``embed`` for q/k/v ([D, H, K]) and gate/up ([D, F]),
``mlp`` for down ([F, D]), and ``(heads, head_dim)`` for o ([H, K, D]).

Training with the shared step: the trainable params are only the adapters and the frozen base
travels as ``ref_params``, which is both the DPO reference (adapters off) and the policy's base:

    step = make_train_step(..., compose=lambda lora, base: apply_lora(base, lora, scale))

On a quantized frozen base (``prefjax.models.quant``: ``config.lora.quantize``) the sum is not
formed for the whole tree: ``apply_lora`` wraps each quantized weight and its adapters in an
``Adapted`` value, which the projection materializes (dequantize, add scale * A @ B) inside the
block that uses it (``prefjax.models.layers.weight``), so no float copy of the whole base exists.

Reference: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from prefjax.errors import ConfigError

# target name -> (module in a block, parameter, number of leading input axes)
TARGETS = {"q": ("attn", "q", 1), "k": ("attn", "k", 1), "v": ("attn", "v", 1),
           "o": ("attn", "o", 2), "gate": ("mlp", "gate", 1), "up": ("mlp", "up", 1),
           "down": ("mlp", "down", 1)}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 8
  alpha: float = 16.0
  targets: Sequence[str] = ("q", "k", "v", "o", "gate", "up", "down")

  def __post_init__(self):
    bad = [t for t in self.targets if t not in TARGETS]
    if bad:
      raise ConfigError(f"lora.targets: unknown target {bad[0]!r}; valid: {', '.join(TARGETS)}")
    if self.rank <= 0:
      raise ConfigError(f"lora.rank must be positive, got {self.rank}")

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def init_lora(params, cfg: LoraConfig, rng) -> dict:
  """Adapters for every block's targeted projections: A random, B zeros.

  Returns:
    {"blocks": {i: {module: {name: {"a": [in..., r], "b": [r, out...]}}}}}, float32.
  """
  lora = {"blocks": {}}
  for i in sorted(params["blocks"]):
    block = params["blocks"][i]
    out = {}
    for t in cfg.targets:
      mod, name, n_in = TARGETS[t]
      w = block[mod][name]
      rng, sub = jax.random.split(rng)
      in_shape, out_shape = w.shape[:n_in], w.shape[n_in:]
      fan_in = 1
      for s in in_shape:
        fan_in *= s
      a = jax.random.normal(sub, (*in_shape, cfg.rank), jnp.float32) * fan_in ** -0.5
      b = jnp.zeros((cfg.rank, *out_shape), jnp.float32)
      out.setdefault(mod, {})[name] = {"a": a, "b": b}
    lora["blocks"][i] = out
  return lora


def lora_delta(a, b, dtype):
  """scale-free update A @ B contracted over the rank axis: [in..., r] x [r, out...]."""
  return jnp.tensordot(a, b, axes=1).astype(dtype)


def is_deferred(x) -> bool:
  """A weight formed where it is used (``materialize(dtype)``): quantized, or ``Adapted``."""
  return hasattr(x, "materialize")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Adapted:
  """A frozen deferred weight (e.g. a ``QuantizedWeight``) plus adapters, merged at use:
  ``materialize(dtype) = base.materialize(float32) + scale * A @ B``, cast to ``dtype``."""
  base: Any
  a: jax.Array                                                          # [in..., r]
  b: jax.Array                                                          # [r, out...]
  scale: float = dataclasses.field(metadata=dict(static=True))

  @property
  def shape(self):
    return self.base.shape

  def materialize(self, dtype):
    w = self.base.materialize(jnp.float32)
    return (w + self.scale * lora_delta(self.a, self.b, jnp.float32)).astype(dtype)


def apply_lora(base_params, lora_params, scale: float) -> dict:
  """Full params W + scale * A @ B for the adapted weights; other leaves are the base's.

  A deferred base weight (quantized) becomes ``Adapted(W, A, B, scale)`` instead: the sum is
  formed inside the block that uses it.
  """
  full = dict(base_params)
  blocks = dict(base_params["blocks"])
  for i, mods in lora_params["blocks"].items():
    block = dict(blocks[i])
    for mod, names in mods.items():
      m = dict(block[mod])
      for name, ab in names.items():
        w = m[name]
        if is_deferred(w):
          m[name] = Adapted(w, ab["a"], ab["b"], scale)
        else:
          m[name] = w + (scale * lora_delta(ab["a"], ab["b"], jnp.float32)).astype(w.dtype)
      block[mod] = m
    blocks[i] = block
  full["blocks"] = blocks
  return full


def dense_params(params) -> dict:
  """``params`` with every deferred weight materialized as a float32 array."""
  return jax.tree.map(lambda x: x.materialize(jnp.float32) if is_deferred(x) else x, params,
                      is_leaf=is_deferred)


def merge_lora(base_params, lora_params, scale: float) -> dict:
  """The merged weights for export (``save_hf_dir``): same as ``apply_lora``, eagerly, as
  plain arrays (a quantized base is dequantized: float32 W + scale * A @ B)."""
  return jax.jit(lambda b, l: dense_params(apply_lora(b, l, scale)))(base_params, lora_params)


def num_lora_params(lora_params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(lora_params)))
