"""Flax NNX decoder-only transformers, log-prob extraction, and checkpoint loading."""
from prefjax.models.config import PRESETS, ModelConfig, make_config
from prefjax.models.logprobs import forward_logps, sequence_logps, token_logprobs
from prefjax.models.transformer import Transformer, init_cache

__all__ = ["PRESETS", "ModelConfig", "make_config", "Transformer", "init_cache",
           "forward_logps", "sequence_logps", "token_logprobs"]
# Checkpoint I/O lives in prefjax.models.hf (config_from_hf, params_from_hf, load_hf_dir,
# save_hf_dir) and prefjax.models.loading (load_model); import those modules directly.
