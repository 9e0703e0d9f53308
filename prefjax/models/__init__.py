"""Flax NNX decoder-only transformers and log-prob extraction."""
from prefjax.models.config import PRESETS, ModelConfig, make_config
from prefjax.models.logprobs import forward_logps, sequence_logps, token_logprobs
from prefjax.models.transformer import Transformer, init_cache

__all__ = ["PRESETS", "ModelConfig", "make_config", "Transformer", "init_cache",
           "forward_logps", "sequence_logps", "token_logprobs"]
