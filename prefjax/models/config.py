"""Model configuration: sizes and the small named switches that distinguish families."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from prefjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only transformer of the Llama family.

  Attributes:
    vocab_size: number of token ids.
    dim: residual stream width ("embed").
    n_layers: transformer blocks.
    n_heads: query heads; ``n_kv_heads`` key/value heads (grouped-query attention when
      fewer; ``n_heads % n_kv_heads == 0``).
    head_dim: width of one head (``dim // n_heads`` for Llama, free for others).
    mlp_dim: hidden width of the SwiGLU MLP.
    max_len: longest sequence (positions and KV cache).
    rope_theta: base of the rotary embedding frequencies.
    norm_eps: RMSNorm epsilon.
    tie_embeddings: the output projection reuses the input embedding.
    dtype: compute dtype ("float32" or "bfloat16"); parameters stay ``param_dtype``.
  """
  vocab_size: int
  dim: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  mlp_dim: int
  max_len: int = 2048
  rope_theta: float = 10000.0
  norm_eps: float = 1e-5
  tie_embeddings: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.n_heads % self.n_kv_heads:
      raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim"):
      if getattr(self, f) <= 0:
        raise ConfigError(f"model config field {f} must be positive, got {getattr(self, f)}")

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    d, h, kv, hd, f, v = (self.dim, self.n_heads, self.n_kv_heads, self.head_dim, self.mlp_dim,
                          self.vocab_size)
    per_layer = d * hd * (h + 2 * kv) + h * hd * d + 3 * d * f + 2 * d
    return v * d * (1 if self.tie_embeddings else 2) + self.n_layers * per_layer + d


PRESETS: dict[str, dict[str, Any]] = {
    # About 0.8M parameters: the testbed default, fast on a 2-core CPU.
    "testbed-tiny": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384,
                         max_len=128),
    # About 3.2M parameters.
    "testbed-small": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, head_dim=32, mlp_dim=768,
                          max_len=128),
}


def make_config(preset: str | None = None, *, vocab_size: int,
                overrides: Mapping[str, Any] | None = None) -> ModelConfig:
  """A ``ModelConfig`` from a named preset plus overrides; unknown names are errors."""
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  kw: dict[str, Any] = {}
  if preset:
    if preset not in PRESETS:
      raise ConfigError(f"unknown model preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
    kw.update(PRESETS[preset])
  for k, v in dict(overrides or {}).items():
    if k not in fields:
      raise ConfigError(f"unknown model config field {k!r}; valid fields: {', '.join(sorted(fields))}")
    kw[k] = v
  kw["vocab_size"] = vocab_size
  return ModelConfig(**kw)
