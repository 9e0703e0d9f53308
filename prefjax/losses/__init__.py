"""Loss functions, looked up by name: ``prefjax.losses.get("dpo")``.

Importing this package registers every loss family below.
"""
from prefjax.losses.registry import LossSpec, get, get_spec, names, register
from prefjax.losses import sft as _sft  # noqa: F401  (registers "sft")
from prefjax.losses import dpo as _dpo  # noqa: F401  (registers "dpo")
from prefjax.losses.dpo import dpo, pairwise_metrics
from prefjax.losses.sft import sft

__all__ = ["LossSpec", "get", "get_spec", "names", "register", "dpo", "sft", "pairwise_metrics"]
