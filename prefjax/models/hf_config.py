"""Hugging Face ``config.json`` <-> ``ModelConfig`` for the supported families.

Families (``model_type``): llama (Llama 1/2/3, SmolLM2), mistral, qwen2 (Qwen2/2.5, q/k/v
biases), qwen3 (QK-norm), gemma2 and gemma3_text (soft-capping, sliding + global layers,
GELU-tanh, sqrt(dim) embedding scale, (1 + w) RMSNorm, pre+post norms), gpt2 (learned
positions, LayerNorm, plain GELU MLP, biases). Both the transformers 4 layout (``rope_theta``,
``rope_scaling``, ``rope_local_base_freq``) and the transformers 5 layout
(``rope_parameters``, ``layer_types``) are read.
"""
from __future__ import annotations

from typing import Any, Mapping

from prefjax.errors import ConfigError
from prefjax.models.config import ModelConfig
from prefjax.models.layers import rope_inv_freq

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")
SUPPORTED = LLAMA_LIKE + ("gpt2",)

ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM", "gpt2": "GPT2LMHeadModel",
}
_TIED_DEFAULT = {"gemma2": True, "gemma3_text": True, "gpt2": True}
_ACTS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
         "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}
_ACT_NAMES = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def _need(hf: Mapping[str, Any], key: str, model_type: str):
  if hf.get(key) is None:
    raise ConfigError(f"config.json field {key!r} is missing (model_type {model_type!r})")
  return hf[key]


def _act(name, field: str) -> str:
  if name not in _ACTS:
    raise ConfigError(f"config.json field {field}={name!r} is not supported; supported: "
                      f"{', '.join(sorted(_ACTS))}")
  return _ACTS[name]


def _rope(hf: Mapping[str, Any], layer_type: str | None):
  """(theta, scaling dict or None) for one layer type, from either config layout."""
  rp = hf.get("rope_parameters")
  if isinstance(rp, Mapping) and layer_type and layer_type in rp:
    rp = rp[layer_type]
  if isinstance(rp, Mapping) and "rope_theta" in rp:
    theta, scaling = rp["rope_theta"], dict(rp)
  else:
    if layer_type == "sliding_attention" and hf.get("rope_local_base_freq") is not None:
      return float(hf["rope_local_base_freq"]), None
    theta, scaling = hf.get("rope_theta", 10000.0), hf.get("rope_scaling")
  if scaling:
    scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
    if "type" in scaling and "rope_type" not in scaling:
      scaling["rope_type"] = scaling.pop("type")
    if scaling.get("rope_type", "default") == "default":
      scaling = None
  return float(theta), scaling


def _layer_types(hf, model_type: str, n_layers: int):
  """Per-layer "full"/"sliding" (None = all full) and the window."""
  window = hf.get("sliding_window")
  types = hf.get("layer_types")
  if model_type == "mistral":
    return None, window                      # every layer slides when a window is set
  if model_type in ("qwen2", "qwen3"):
    if not hf.get("use_sliding_window") or not window:
      return None, None
    if types is None:
      start = hf.get("max_window_layers", n_layers)
      types = ["sliding_attention" if i >= start else "full_attention" for i in range(n_layers)]
  elif model_type == "gemma2" and types is None:
    types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
  elif model_type == "gemma3_text" and types is None:
    pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))
    types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
             for i in range(n_layers)]
  if types is None:
    return None, None
  ours = []
  for t in types:
    if t not in ("sliding_attention", "full_attention"):
      raise ConfigError(f"config.json field layer_types has {t!r}; supported: "
                        "sliding_attention, full_attention")
    ours.append("sliding" if t == "sliding_attention" else "full")
  if "sliding" not in ours:
    return None, None
  return tuple(ours), _need(hf, "sliding_window", model_type)


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> ModelConfig:
  """A ``ModelConfig`` from a Hugging Face config dict (``config.json``).

  Args:
    hf_config: the parsed ``config.json``.
    **overrides: ModelConfig fields to set on top (e.g. ``dtype="bfloat16"``).
  Raises:
    ConfigError naming the field, for an unsupported ``model_type`` or feature.
  """
  hf = dict(hf_config)
  mt = hf.get("model_type")
  if mt not in SUPPORTED:
    raise ConfigError(f"config.json field model_type={mt!r} is not supported; supported: "
                      f"{', '.join(SUPPORTED)}")
  if mt == "gpt2":
    kw = _gpt2_fields(hf)
  else:
    kw = _llama_like_fields(hf, mt)
  kw["tie_embeddings"] = bool(hf.get("tie_word_embeddings", _TIED_DEFAULT.get(mt, False)))
  kw.update(overrides)
  cfg = ModelConfig(**kw)
  rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)   # unsupported scaling: error
  return cfg


def _llama_like_fields(hf, mt: str) -> dict[str, Any]:
  n_layers = _need(hf, "num_hidden_layers", mt)
  heads = _need(hf, "num_attention_heads", mt)
  dim = _need(hf, "hidden_size", mt)
  gemma = mt.startswith("gemma")
  act_field = "hidden_activation" if gemma and hf.get("hidden_activation") else "hidden_act"
  layer_types, window = _layer_types(hf, mt, n_layers)
  theta, scaling = _rope(hf, "full_attention" if gemma else None)
  kw = dict(
      vocab_size=_need(hf, "vocab_size", mt), dim=dim, n_layers=n_layers, n_heads=heads,
      n_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or dim // heads,
      mlp_dim=_need(hf, "intermediate_size", mt),
      max_len=hf.get("max_position_embeddings", 2048),
      rope_theta=theta, norm_eps=hf.get("rms_norm_eps", 1e-6),
      act=_act(hf.get(act_field, "silu"), act_field),
      sliding_window=window, layer_types=layer_types,
      rope_scaling=tuple(sorted(scaling.items())) if scaling else None)
  if mt == "qwen2":
    kw["qkv_bias"] = True
  elif hf.get("attention_bias"):
    kw["qkv_bias"] = kw["out_bias"] = True
  if hf.get("mlp_bias"):
    kw["mlp_bias"] = True
  if mt == "qwen3":
    kw["qk_norm"] = True
  if gemma:
    kw.update(norm_offset=1.0, embed_scale=True, post_norms=True,
              query_scale=float(_need(hf, "query_pre_attn_scalar", mt)) ** -0.5,
              attn_softcap=hf.get("attn_logit_softcapping"),
              final_softcap=hf.get("final_logit_softcapping"))
    if mt == "gemma3_text":
      kw["qk_norm"] = True
      local_theta, local_scaling = _rope(hf, "sliding_attention")
      if local_scaling:
        raise ConfigError("config.json rope scaling of sliding_attention layers is not supported")
      kw["rope_theta_local"] = local_theta
  return kw


def _gpt2_fields(hf) -> dict[str, Any]:
  for field, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
    if hf.get(field, ok) != ok:
      raise ConfigError(f"config.json field {field}={hf[field]!r} is not supported for gpt2")
  dim, heads = _need(hf, "n_embd", "gpt2"), _need(hf, "n_head", "gpt2")
  return dict(
      vocab_size=_need(hf, "vocab_size", "gpt2"), dim=dim, n_layers=_need(hf, "n_layer", "gpt2"),
      n_heads=heads, n_kv_heads=heads, head_dim=dim // heads,
      mlp_dim=hf.get("n_inner") or 4 * dim, max_len=hf.get("n_positions", 1024),
      norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm="layer", mlp="plain",
      act=_act(hf.get("activation_function", "gelu_new"), "activation_function"),
      pos_emb="learned", qkv_bias=True, out_bias=True, mlp_bias=True)


def hf_family(cfg: ModelConfig) -> str:
  """The HF ``model_type`` whose architecture matches ``cfg``'s switches."""
  if cfg.pos_emb == "learned":
    family = "gpt2"
  elif cfg.post_norms:
    family = "gemma3_text" if cfg.qk_norm else "gemma2"
  elif cfg.qk_norm:
    family = "qwen3"
  elif cfg.qkv_bias and not cfg.out_bias:
    family = "qwen2"
  elif cfg.sliding_window and cfg.layer_types is None:
    family = "mistral"
  else:
    family = "llama"
  if config_from_hf(config_to_hf(cfg, family)).replace(
      max_len=cfg.max_len, dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat=cfg.remat,
      scan_layers=cfg.scan_layers) != cfg:
    raise ConfigError(f"model config has no Hugging Face equivalent (closest: {family}); "
                      "check the family switches")
  return family


def config_to_hf(cfg: ModelConfig, family: str | None = None) -> dict[str, Any]:
  """A transformers ``config.json`` dict for ``cfg`` (family inferred when None)."""
  family = family or hf_family(cfg)
  common = dict(model_type=family, architectures=[ARCHITECTURES[family]],
                vocab_size=cfg.vocab_size, tie_word_embeddings=cfg.tie_embeddings,
                torch_dtype=cfg.param_dtype if cfg.param_dtype != "bfloat16" else "float32")
  if family == "gpt2":
    return dict(common, n_embd=cfg.dim, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                n_inner=cfg.mlp_dim, n_positions=cfg.max_len, layer_norm_epsilon=cfg.norm_eps,
                activation_function={"gelu_tanh": "gelu_new", "gelu": "gelu"}.get(cfg.act, cfg.act))
  hf = dict(common, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
            head_dim=cfg.head_dim, intermediate_size=cfg.mlp_dim,
            max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta)
  hf["hidden_activation" if family.startswith("gemma") else "hidden_act"] = _ACT_NAMES[cfg.act]
  if cfg.rope_scaling:
    hf["rope_scaling"] = dict(cfg.rope_scaling)
  if family in ("llama", "mistral", "qwen3"):
    hf["attention_bias"] = cfg.qkv_bias
  if family == "llama":
    hf["mlp_bias"] = cfg.mlp_bias
  if family == "mistral":
    hf["sliding_window"] = cfg.sliding_window
  if cfg.layer_types is not None or family.startswith("gemma"):
    types = [cfg.layer_type(i) for i in range(cfg.n_layers)]
    hf["layer_types"] = [t + "_attention" for t in types]
    hf["sliding_window"] = cfg.sliding_window
    if family in ("qwen2", "qwen3"):
      hf["use_sliding_window"] = "sliding" in types
      hf["max_window_layers"] = types.index("sliding") if "sliding" in types else cfg.n_layers
  if family.startswith("gemma"):
    scalar = (cfg.query_scale or cfg.head_dim ** -0.5) ** -2
    scalar = round(scalar) if abs(scalar - round(scalar)) < 1e-6 else scalar
    hf.update(query_pre_attn_scalar=scalar,
              attn_logit_softcapping=cfg.attn_softcap,
              final_logit_softcapping=cfg.final_softcap)
    if family == "gemma3_text":
      hf["rope_local_base_freq"] = cfg.rope_theta_local or cfg.rope_theta
  return hf
