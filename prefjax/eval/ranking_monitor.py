"""Ranking accuracy during preference training: an ``on_log`` hook for ``run_stage``.

At log steps that are multiples of ``every`` (and at the last step) the hook scores a fixed
subset of training pairs and the held-out pairs with the current policy and logs

  ranking/{train,heldout}_accuracy        mean_b 1[log pi(y_w|x) >= log pi(y_l|x)]
  ranking/{train,heldout}_accuracy_normalized   the same with per-token mean log-probs
  ranking/{train,heldout}_flips/{wrong_to_right,right_to_wrong}   vs the reference
  ranking/{train,heldout}_ref_accuracy    the reference's (constant) accuracy

Reference scores are computed once, when the hook is built. Scoring uses the length-
bucketed jitted forward passes of ``prefjax.eval.pair_scoring``.

Reference: Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings",
arXiv 2405.19534 (ranking accuracy, Sec. 2; flips, Sec. 4).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from prefjax.eval import pair_scoring
from prefjax.metrics import flips, ranking


class _Split:
  """One set of pairs, tokenised once, with the reference's per-pair correctness."""

  def __init__(self, name, graphdef, ref_params, tokenizer, pairs, max_len, batch_size):
    self.name = name
    self.prompts, self.chosen, self.rejected, kept, _ = pair_scoring.encode_pairs(
        tokenizer, pairs, max_len=max_len)
    self.kw = dict(max_len=max_len, batch_size=batch_size)
    self.graphdef = graphdef
    self.ref_correct = self.correct(ref_params)[0] if kept else None

  def correct(self, params):
    c, r = pair_scoring.score_pairs(self.graphdef, params, self.prompts, self.chosen,
                                    self.rejected, **self.kw)
    return (np.asarray(ranking.ranking_accuracy(c.sums, r.sums)[0]),
            np.asarray(ranking.ranking_accuracy(c.means, r.means)[0]))


def make_ranking_hook(graphdef, ref_params, tokenizer, *, train_pairs: Sequence[dict],
                      heldout_pairs: Sequence[dict], max_len: int, every: int,
                      last_step: int, batch_size: int = 64, params_fn=None):
  """Returns ``on_log(state, step) -> dict`` for ``run_stage`` (empty off the schedule).

  Args:
    graphdef, ref_params: the model and the reference's params (pure dict).
    tokenizer: ``encode_prompt`` / ``encode_completion``.
    train_pairs, heldout_pairs: ``{"prompt", "chosen", "rejected"}`` dicts; pass a fixed
      subset of the training pairs to keep it cheap. Pairs that cannot be tokenised or do
      not fit ``max_len`` are left out.
    max_len: the longest scored row.
    every: score at steps that are multiples of ``every`` (and at ``last_step``).
    batch_size: rows per forward pass.
    params_fn: maps the train state's params to full model params (LoRA: merge the
      adapters into the base); None when they already are.
  """
  splits = [_Split(name, graphdef, ref_params, tokenizer, pairs, max_len, batch_size)
            for name, pairs in (("train", train_pairs), ("heldout", heldout_pairs)) if pairs]

  def on_log(state, step):
    if not (every > 0 and step % every == 0) and step != last_step:
      return {}
    out = {}
    for sp in splits:
      if sp.ref_correct is None:
        continue
      params = state["params"] if params_fn is None else params_fn(state["params"])
      correct, correct_norm = sp.correct(params)
      f = flips.flip_rates(sp.ref_correct, correct)
      out[f"ranking/{sp.name}_accuracy"] = float(correct.mean())
      out[f"ranking/{sp.name}_accuracy_normalized"] = float(correct_norm.mean())
      out[f"ranking/{sp.name}_ref_accuracy"] = float(sp.ref_correct.mean())
      for k in ("wrong_to_right", "right_to_wrong"):
        out[f"ranking/{sp.name}_flips/{k}"] = float(f[f"ranking/flips/{k}"])
    return out

  return on_log
