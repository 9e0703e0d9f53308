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

import functools
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from prefjax.models.logprobs import forward_logps
from prefjax.rewards.scoring import RewardScorer, batched_apply


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _logps(graphdef, params, batch):
  logps, lengths, _ = forward_logps(nnx.merge(graphdef, params), batch)
  return logps, lengths


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
               max_len: int, batch_size: int = 32, normalize: bool = False):
    super().__init__(graphdef, policy_params, tokenizer, max_len=max_len,
                     batch_size=batch_size)
    self.ref_params, self.beta, self.normalize = ref_params, beta, normalize

  def _sums(self, params, rows):
    out = {}
    fn = lambda b: np.stack([np.asarray(x) for x in _logps(self.graphdef, params, b)], -1)
    both = batched_apply(fn, rows, self.batch_size)                               # (N, 2)
    out["logps"], out["lengths"] = both[:, 0], both[:, 1]
    return out

  def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
    if len(prompts) != len(responses):
      raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = self._rows(prompts, responses)
    pol = self._sums(self.params, rows)
    r = pol["logps"]
    if self.ref_params is not None:
      r = r - self._sums(self.ref_params, rows)["logps"]
    if self.normalize:
      r = r / np.maximum(pol["lengths"], 1.0)
    return (self.beta * r).astype(np.float32)
