"""Post-hoc reward calibration (RC-Mean, RC-LWR) and its features, metrics and score files.

Reference: Huang et al., "Post-hoc Reward Calibration: A Case Study on Length Bias",
arXiv 2409.17407.
"""
from prefjax.rewards import features
from prefjax.rewards.calibration import (Calibrated, RCMean, calibrate, frac_for_ties,
                                         length_penalty, pairwise_accuracy, rankdata, rc_lwr,
                                         rc_lwr_penalty, rc_mean, rc_mean_half_width,
                                         rc_mean_rows, spearman, window_mean)
from prefjax.rewards.features import (char_length, markdown_counts, markdown_elements,
                                      token_length)
from prefjax.rewards.lowess import lowess, num_neighbours
from prefjax.rewards.model import RewardModel, last_completion_index
from prefjax.rewards.scorer import RewardScorer
from prefjax.rewards.implicit import ImplicitRewardScorer
from prefjax.rewards.scores_io import BadRow, Scores, ScoresError, read_scores, write_jsonl

__all__ = [
    "RewardModel", "RewardScorer", "ImplicitRewardScorer", "last_completion_index",
    "BadRow", "Calibrated", "RCMean", "Scores", "ScoresError", "calibrate", "char_length",
    "features", "frac_for_ties", "length_penalty", "lowess", "markdown_counts",
    "markdown_elements", "num_neighbours", "pairwise_accuracy", "rankdata", "rc_lwr",
    "rc_lwr_penalty", "rc_mean", "rc_mean_half_width", "rc_mean_rows", "read_scores",
    "spearman", "token_length", "window_mean", "write_jsonl",
]
