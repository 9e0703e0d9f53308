"""Batched generation with a KV cache."""
from prefjax.sampling.sampler import generate, sample_token

__all__ = ["generate", "sample_token"]
