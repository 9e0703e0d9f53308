"""Evaluation metrics on log-likelihood arrays (pure ``jnp`` functions)."""
from prefjax.metrics.flips import (
    dpo_difficulty,
    dpo_flip_loss,
    flip_rates,
    flip_rates_by_difficulty,
    ipo_flip_loss,
)
from prefjax.metrics.ranking import (
    ALPHA_EPS,
    BETAS,
    TABLE1_COLUMNS,
    TIE_TOLERANCE,
    alignment_gap,
    idealized_ranking_accuracy,
    idealized_ranking_correct,
    listwise_ranking_accuracy,
    prob_abs_diff,
    ranking_accuracy,
    render_markdown,
    sequence_scores,
    table1,
)

__all__ = [
    "ALPHA_EPS", "BETAS", "TABLE1_COLUMNS", "TIE_TOLERANCE", "alignment_gap",
    "dpo_difficulty", "dpo_flip_loss", "flip_rates", "flip_rates_by_difficulty",
    "idealized_ranking_accuracy", "idealized_ranking_correct", "ipo_flip_loss",
    "listwise_ranking_accuracy", "prob_abs_diff", "ranking_accuracy", "render_markdown",
    "sequence_scores", "table1",
]
