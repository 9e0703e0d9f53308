"""Batched sampling with a KV cache: the jitted core (``sample_batch``) and ``generate``."""
from prefjax.sampling.sampler import (bucket_width, generate, left_pad, prompt_copies,
                                      sample_batch, sample_token, shared_prefix_len)

__all__ = ["bucket_width", "generate", "left_pad", "prompt_copies", "sample_batch",
           "sample_token", "shared_prefix_len"]
