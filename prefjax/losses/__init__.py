"""Loss functions, looked up by name: ``prefjax.losses.get("dpo")``.

Importing this package registers every loss family below.
"""
# Importing a family's module registers its losses (the order fixes nothing but the
# "already registered by" message).
from prefjax.losses import sft as _sft  # noqa: F401  (sft)
from prefjax.losses import dpo as _dpo  # noqa: F401  (dpo)
from prefjax.losses import sigmoid_variants as _sigmoid_variants  # noqa: F401
from prefjax.losses import aot as _aot  # noqa: F401
from prefjax.losses import ipo as _ipo  # noqa: F401
from prefjax.losses import anchored as _anchored  # noqa: F401
from prefjax.losses import reference_free as _reference_free  # noqa: F401
from prefjax.losses import kto as _kto  # noqa: F401
from prefjax.losses import multi_sample as _multi_sample  # noqa: F401
from prefjax.losses import reward as _reward  # noqa: F401  (bradley_terry)
from prefjax.losses import ppo as _ppo  # noqa: F401  (ppo)
from prefjax.losses import token_reward as _token_reward  # noqa: F401  (token_bt)
from prefjax.losses.registry import LossSpec, get, get_spec, names, register
from prefjax.losses.sft import sft
from prefjax.losses.dpo import dpo, pairwise_metrics, reward_metrics
from prefjax.losses.sigmoid_variants import discopop, dpo_gamma, exo_pair, rdpo, sigmoid_norm
from prefjax.losses.aot import aot, aot_unpaired
from prefjax.losses.ipo import hinge, ipo, sppo_hard
from prefjax.losses.anchored import apo_down, apo_zero, bco_pair, nca_pair
from prefjax.losses.reference_free import cpo, orpo, simpo
from prefjax.losses.kto import kto
from prefjax.losses.multi_sample import mdpo, mipo
from prefjax.losses.combination import combine, make_combined_spec
from prefjax.losses.reward import bradley_terry
from prefjax.losses.ppo import ppo
from prefjax.losses.token_reward import token_bt

__all__ = [
    # registry
    "LossSpec", "get", "get_spec", "names", "register",
    # shared metrics
    "pairwise_metrics", "reward_metrics",
    # sft
    "sft",
    # pairwise, with a reference model
    "dpo", "rdpo", "dpo_gamma", "sigmoid_norm", "exo_pair", "discopop", "aot", "aot_unpaired",
    "ipo", "sppo_hard", "hinge", "nca_pair", "bco_pair", "apo_zero", "apo_down",
    # pairwise, reference-free
    "cpo", "simpo", "orpo",
    # unpaired
    "kto",
    # multi-sample
    "mdpo", "mipo",
    # reward models
    "bradley_terry", "token_bt",
    # reinforcement learning
    "ppo",
    # combinations
    "combine", "make_combined_spec",
]
