"""Reinforcement learning through the shared step: advantages, KL, rewards, rollout, stage.

Pure pieces are re-exported here; ``prefjax.rl.rollout`` and ``prefjax.rl.stage`` (which
import the train package) are imported explicitly by their users.
"""
from prefjax.rl.advantages import (AdvantageSpec, compute_advantages, masked_mean, whiten)
from prefjax.rl.advantages import names as advantage_names
from prefjax.rl.kl import (ESTIMATORS, KL_PLACEMENTS, KLController, adaptive_kl_update,
                           kl_estimate, penalised_rewards)
from prefjax.rl.reward_sources import (REWARD_SOURCES, RewardSource, RolloutView, SourceEnv,
                                build_sources, check_sources, compute_rewards, make_source,
                                place_sequence, place_spans, register_reward_source)

__all__ = [
    "AdvantageSpec", "compute_advantages", "masked_mean", "whiten", "advantage_names",
    "ESTIMATORS", "KL_PLACEMENTS", "KLController", "adaptive_kl_update", "kl_estimate",
    "penalised_rewards",
    "REWARD_SOURCES", "RewardSource", "RolloutView", "SourceEnv", "build_sources",
    "check_sources", "compute_rewards", "make_source", "place_sequence", "place_spans",
    "register_reward_source",
]
