"""The DPO implicit reward as a scorer: r(x, y) = beta * log pi(y|x) / pi_ref(y|x).

Any policy trained by a DPO-family loss defines a reward model without a head (Rafailov et
al.); ``ImplicitRewardScorer`` makes it usable wherever a ``RewardScorer`` is
(``score(prompts, responses) -> [N]``). Without a reference it is the (scaled) log-likelihood
beta * log pi(y|x), a reference-free baseline (SimPO-style rewards divide by length:
``normalize=True``).

Reference: Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly
a Reward Model", arXiv 2305.18290.

Example:
  >>> scorer = ImplicitRewardScorer(graphdef, policy_params, ref_params, tok, beta=0.3,
  ...                               max_len=32)
  >>> rewards = scorer.score(["sort:3,1,2"], ["1,2,3"])        # [1]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from prefjax.eval.pair_scoring import _window_ok, score_sequences
from prefjax.eval.completion_scoring import completion_logps
from prefjax.losses.dpo import implicit_reward
from prefjax.rewards.scorer import RewardScorer, batched_apply


class ImplicitRewardScorer(RewardScorer):
  """beta * (log pi(y|x) - log pi_ref(y|x)) over completion tokens; [N] per ``score`` call.

  Args:
    graphdef: the language model's graphdef (a Transformer).
    policy_params: pure params of pi.
    ref_params: pure params of pi_ref, or None for beta * log pi(y|x).
    tokenizer: prompt/completion tokenizer.
    beta: the DPO beta.
    normalize: divide by the number of completion tokens (average log-ratio).
  """

  def __init__(self, graphdef, policy_params, ref_params, tokenizer, *, beta: float = 1.0,
               max_len: int, batch_size: int = 32, normalize: bool = False,
               layout: str = "prefix"):
    super().__init__(graphdef, policy_params, tokenizer, max_len=max_len,
                     batch_size=batch_size, layout=layout)
    self.ref_params, self.beta, self.normalize = ref_params, beta, normalize

  def _sums(self, params, rows):
    out = {}
    fn = lambda b: np.stack([np.asarray(x) for x in completion_logps(self.graphdef, params, b)], -1)
    both = batched_apply(fn, rows, self.batch_size)                               # (N, 2)
    out["logps"], out["lengths"] = both[:, 0], both[:, 1]
    return out

  def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if self.layout == "prefix" and _window_ok(self.graphdef):
      fitted = self._fit(prompts, responses)            # tokenised once for both models
      sums = lambda params: self._sums_units(params, *fitted)
    else:
      rows = self._rows(prompts, responses)
      sums = lambda params: self._sums(params, rows)
    pol = sums(self.params)
    ref = 0.0 if self.ref_params is None else sums(self.ref_params)["logps"]
    r = implicit_reward(pol["logps"], ref, self.beta)
    if self.normalize:
      r = r / np.maximum(pol["lengths"], 1.0)
    return np.asarray(r, np.float32)

  def _sums_units(self, params, p_ids, comp, groups):
    """Summed log-probs on prefix-shared rows (``_fit``'s groups share their prompt)."""
    if not comp:
      return {"logps": np.zeros(0, np.float32), "lengths": np.zeros(0, np.float32)}
    kw = self._unit_kwargs(len(comp))
    kw.pop("buckets")
    sc = score_sequences(self.graphdef, params, p_ids, comp, max_len=self.max_len,
                         layout="prefix", groups=[g[1] for g in groups], **kw)
    self.last_truncated = self.last_truncated | sc.truncated
    return {"logps": sc.sums, "lengths": sc.lengths}
