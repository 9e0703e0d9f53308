"""A length-biased labeller for the testbed: preferences that reward verbosity.

Responses to the sort task are padded with filler (``"."`` * k, k ~ U{1..max_pad} with
probability ``pad_rate``) that changes nothing about their quality: the oracle is
r*(x, y) = r*_task(x, strip(y)). The labeller adds a bias b(c) = ``bias`` * c (c = characters)
before its Bradley-Terry draw:

  P(y1 > y2) = sigmoid((r*(y1) + b(c1) - r*(y2) - b(c2)) / T)

so a reward model fitted to its labels learns r* + b(c): a length bias. Held-out pairs are
labelled by r* alone (the better response is chosen; pairs of equal r* are not used), which is
what calibration should recover.

Reference: the setting of Huang et al., "Post-hoc Reward Calibration: A Case Study on Length
Bias", arXiv 2409.17407.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from prefjax.testbed import world
from prefjax.testbed.tasks import get_task

PAD_CHAR = "."


@dataclasses.dataclass(frozen=True)
class LengthBias:
  pad_rate: float = 0.5    # probability that a response is padded
  max_pad: int = 8         # padding length k ~ U{1..max_pad}
  bias: float = 0.05       # labeller's b(c) = bias * characters


def strip_padding(response: str) -> str:
  return response.rstrip(PAD_CHAR)


def oracle_reward(task, prompt: str, response: str) -> float:
  """r* of the response without its padding."""
  return task.reward(prompt, strip_padding(response))


def _maybe_pad(response, lb: LengthBias, rng):
  if rng.random() < lb.pad_rate:
    return response + PAD_CHAR * int(rng.integers(1, lb.max_pad + 1))
  return response


def length_bias_pairs(cfg: world.WorldConfig, lb: LengthBias, n: int, split: str = "train"):
  """Pairs labelled by the biased labeller (``split="train"``) or by r* alone (other splits).

  Returns dicts with prompt, chosen, rejected, alpha (P(chosen) under the labeller),
  reward_chosen / reward_rejected (oracle), task.
  """
  rng = world._rng(cfg, split, "length_bias")
  out = []
  oracle_labels = split != "train"
  tasks = [get_task(t) for t in cfg.tasks]
  i = 0
  while len(out) < n:
    task = tasks[int(rng.integers(len(tasks)))]
    prompt = task.sample_prompt(rng)
    y1 = _maybe_pad(world._response(task, prompt, rng, cfg.proposal_correct_rate), lb, rng)
    y2 = _maybe_pad(world._response(task, prompt, rng, cfg.proposal_correct_rate), lb, rng)
    r1, r2 = oracle_reward(task, prompt, y1), oracle_reward(task, prompt, y2)
    i += 1
    if y1 == y2 or (oracle_labels and r1 == r2):
      continue
    if oracle_labels:
      first_wins, p1 = r1 > r2, 1.0
    else:
      p1 = world.bt_alpha(r1 + lb.bias * len(y1), r2 + lb.bias * len(y2),
                          cfg.bt_temperature, cfg.label_noise)
      first_wins = rng.random() < p1
    (yw, rw), (yl, rl) = ((y1, r1), (y2, r2)) if first_wins else ((y2, r2), (y1, r1))
    out.append({"id": f"{split}-lb-{len(out)}", "task": task.name, "prompt": prompt,
                "chosen": yw, "rejected": yl, "alpha": p1 if first_wins else 1.0 - p1,
                "reward_chosen": rw, "reward_rejected": rl})
  return out


def oracle_agreement(pairs) -> float:
  """Fraction of pairs whose label agrees with r* (pairs of equal r* count half)."""
  a = [1.0 if p["reward_chosen"] > p["reward_rejected"] else
       0.5 if p["reward_chosen"] == p["reward_rejected"] else 0.0 for p in pairs]
  return float(np.mean(a))
