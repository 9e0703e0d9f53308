"""Batched sampling with a KV cache: the jitted core (``sample_batch``) and ``generate``."""
from prefjax.sampling.sampler import (bucket_width, generate, left_pad, sample_batch,
                                      sample_token)

__all__ = ["bucket_width", "generate", "left_pad", "sample_batch", "sample_token"]
