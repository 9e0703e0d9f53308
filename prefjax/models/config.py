"""Model configuration: sizes and the small named switches that distinguish families."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from prefjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A decoder-only transformer; the defaults are the Llama family.

  The family switches (all default to Llama behaviour) make the same model cover Mistral,
  Qwen2/2.5/3, Gemma 2/3 and GPT-2 (see prefjax/models/hf_config.py for the mappings).

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
    dtype: compute dtype ("float32" or "bfloat16"); parameters stay ``param_dtype``
      (e.g. bfloat16 compute over float32 master weights).
    norm: "rms" (RMSNorm) or "layer" (LayerNorm with bias).
    norm_offset: RMSNorm multiplies by (norm_offset + w); Gemma uses 1.0.
    qkv_bias, out_bias, mlp_bias: biases on q/k/v, on the attention output, on the MLP.
    qk_norm: RMSNorm over head_dim of queries and keys before RoPE (Qwen3, Gemma 3).
    mlp: "gated" (down(act(gate x) * up x)) or "plain" (down(act(up x))).
    act: "silu", "gelu_tanh" or "gelu" (exact erf).
    pos_emb: "rope" or "learned" (absolute position table of ``max_len`` rows, GPT-2).
    embed_scale: multiply input embeddings by sqrt(dim) (Gemma).
    query_scale: attention logit scale; None = head_dim ** -0.5.
    attn_softcap, final_softcap: cap * tanh(x / cap) on attention / output logits.
    sliding_window: a sliding layer's query at index i sees keys at i - W < j <= i.
    layer_types: per layer "full" or "sliding"; None = all "sliding" when
      ``sliding_window`` is set (Mistral), else all "full".
    rope_theta_local: RoPE base of sliding layers (Gemma 3); None = ``rope_theta``.
    rope_scaling: None, or sorted (key, value) pairs of a HF rope scaling dict; supported
      rope_type "linear" and "llama3"; applies to full-attention layers.
    post_norms: extra norms on the attention and MLP outputs before the residual add (Gemma).
    remat: rematerialisation of each block in the backward pass: "none" (keep every
      activation), "block" (keep only each block's input, recompute the rest) or
      "save_matmuls" (keep the outputs of the weight matmuls, recompute the cheap
      element-wise ops and the attention scores). Changes memory and speed, not results.
    scan_layers: run the blocks with ``jax.lax.scan`` (compile time flat in depth); needs
      every block to have the same structure (else the plain loop runs). Parameters keep the
      per-layer layout ``blocks.0``, ``blocks.1``, ... either way.
    attention_kernel: None (chosen per backend and dtype), "dense", "blockwise" (flash
      attention in JAX: memory linear in sequence length), "cudnn" or "xla"
      (prefjax/models/attention.py). Changes memory and speed, not results.
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
  norm: str = "rms"
  norm_offset: float = 0.0
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  mlp: str = "gated"
  act: str = "silu"
  pos_emb: str = "rope"
  embed_scale: bool = False
  query_scale: float | None = None
  attn_softcap: float | None = None
  final_softcap: float | None = None
  sliding_window: int | None = None
  layer_types: tuple[str, ...] | None = None
  rope_theta_local: float | None = None
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  post_norms: bool = False
  remat: str = "none"
  scan_layers: bool = False
  attention_kernel: str | None = None

  def __post_init__(self):
    if self.n_heads % self.n_kv_heads:
      raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
    for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim"):
      if getattr(self, f) <= 0:
        raise ConfigError(f"model config field {f} must be positive, got {getattr(self, f)}")

    choices = {"norm": ("rms", "layer"), "mlp": ("gated", "plain"),
               "act": ("silu", "gelu_tanh", "gelu"), "pos_emb": ("rope", "learned"),
               "dtype": ("float32", "bfloat16", "float16", "float64"),
               "param_dtype": ("float32", "bfloat16", "float16", "float64"),
               "remat": ("none", "block", "save_matmuls"),
               "attention_kernel": (None, "dense", "blockwise", "cudnn", "xla")}
    for f, ok in choices.items():
      if getattr(self, f) not in ok:
        raise ConfigError(f"model config field {f}={getattr(self, f)!r}; valid: {', '.join(map(str, ok))}")
    if self.layer_types is not None:
      if isinstance(self.layer_types, list):   # from JSON; keep the config hashable
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
      if len(self.layer_types) != self.n_layers or any(
          t not in ("full", "sliding") for t in self.layer_types):
        raise ConfigError(f"model config field layer_types={self.layer_types!r} needs "
                          f"{self.n_layers} entries of 'full' or 'sliding'")
      if "sliding" in self.layer_types and not self.sliding_window:
        raise ConfigError("model config field layer_types has sliding layers but "
                          "sliding_window is not set")
    if self.rope_scaling is not None:
      items = self.rope_scaling.items() if isinstance(self.rope_scaling, Mapping) else (
          self.rope_scaling)
      object.__setattr__(self, "rope_scaling", tuple(sorted((str(k), v) for k, v in items)))

  def layer_type(self, i: int) -> str:
    """"full" or "sliding" for block ``i``."""
    if self.layer_types is not None:
      return self.layer_types[i]
    return "sliding" if self.sliding_window else "full"

  def to_dict(self) -> dict[str, Any]:
    """JSON-friendly fields (``from_dict`` inverts it)."""
    d = dataclasses.asdict(self)
    if d["rope_scaling"] is not None:
      d["rope_scaling"] = dict(d["rope_scaling"])
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ConfigError(f"unknown model config field {unknown[0]!r}; valid fields: "
                        f"{', '.join(sorted(fields))}")
    return cls(**d)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    d, h, kv, hd, f, v = (self.dim, self.n_heads, self.n_kv_heads, self.head_dim, self.mlp_dim,
                          self.vocab_size)
    gated = self.mlp == "gated"
    norm = d * (2 if self.norm == "layer" else 1)
    per_layer = (d * hd * (h + 2 * kv) + h * hd * d + (3 if gated else 2) * d * f
                 + norm * (4 if self.post_norms else 2)
                 + (hd * (h + 2 * kv) if self.qkv_bias else 0) + (d if self.out_bias else 0)
                 + (2 * hd if self.qk_norm else 0)
                 + ((2 * f if gated else f) + d if self.mlp_bias else 0))
    pos = self.max_len * d if self.pos_emb == "learned" else 0
    return v * d * (1 if self.tie_embeddings else 2) + self.n_layers * per_layer + norm + pos

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
