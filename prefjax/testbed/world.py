"""The synthetic preference world: demonstrations, labelled pairs and groups, all exact.

Deterministic given a seed. Labels follow a Bradley-Terry draw on the oracle reward:

  alpha(x, y1, y2) = (1 - eps) * sigmoid((r*(x, y1) - r*(x, y2)) / T) + eps * (1 - sigmoid(...))

where T is ``bt_temperature`` and eps the ``label_noise`` (a flip after the BT draw). The
stored ``alpha`` is P(chosen is preferred to rejected) under exactly the process that drew
the label, so label frequencies over repeated draws converge to it.
"""
from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from prefjax.testbed.tasks import get_task, minimal_edit


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  tasks: tuple[str, ...] = ("sort",)
  seed: int = 0
  sft_error_rate: float = 0.4       # fraction of demonstrations that are flawed
  proposal_correct_rate: float = 0.5  # responses in pairs: correct with this probability
  bt_temperature: float = 0.05
  label_noise: float = 0.0
  group_size: int = 4                # samples per side for group (multi-sample) preferences


def _rng(cfg: WorldConfig, split: str, kind: str):
  return np.random.default_rng([cfg.seed, zlib.crc32(split.encode()), zlib.crc32(kind.encode())])


def bt_alpha(r1, r2, temperature, noise):
  """P(y1 preferred over y2) under Bradley-Terry on oracle rewards with label-flip noise."""
  p = 1.0 / (1.0 + math.exp(-(r1 - r2) / temperature))
  return (1 - noise) * p + noise * (1 - p)


def is_heldout(prompt: str) -> bool:
  """One prompt in ten is reserved for evaluation (a hash split: disjoint for any sizes)."""
  return zlib.crc32(prompt.encode()) % 10 == 0


def _prompts(cfg, split, n, rng):
  """n (task, prompt) pairs; eval prompts never appear in the training splits."""
  tasks = [get_task(t) for t in cfg.tasks]
  want_heldout = split != "train"
  out = []
  while len(out) < n:
    t = tasks[int(rng.integers(len(tasks)))]
    p = t.sample_prompt(rng)
    if is_heldout(p) == want_heldout:
      out.append((t, p))
  return out


def _response(task, prompt, rng, correct_rate):
  good = task.solve(prompt, rng)
  return good if rng.random() < correct_rate else task.corrupt(prompt, good, rng)


def sft_examples(cfg: WorldConfig, n: int, split: str = "train"):
  """Demonstrations: correct with probability 1 - sft_error_rate, else a flawed response."""
  rng = _rng(cfg, split, "sft")
  out = []
  for i, (task, prompt) in enumerate(_prompts(cfg, split, n, rng)):
    response = _response(task, prompt, rng, 1.0 - cfg.sft_error_rate)
    out.append({"id": f"{split}-sft-{i}", "task": task.name, "prompt": prompt,
                "response": response, "reward": task.reward(prompt, response)})
  return out


def _edit_fields(task, prompt, response, rng, prefix):
  """The minimal edit of a flawed response (empty ops for a correct one)."""
  if task.reward(prompt, response) >= 1.0:
    return {f"{prefix}_edit": response, f"{prefix}_flawed_mask": [0] * len(response)}
  target = task.solve(prompt, None)
  if task.population:  # any valid option is correct: edit towards the first one
    target = task.options(prompt)[0]
  _, mask = minimal_edit(response, target)
  return {f"{prefix}_edit": target, f"{prefix}_flawed_mask": mask}


def preference_pairs(cfg: WorldConfig, n: int, split: str = "train"):
  """Pairs (chosen, rejected) labelled by a Bradley-Terry draw; alpha stored with the pair."""
  rng = _rng(cfg, split, "pairs")
  out = []
  for i, (task, prompt) in enumerate(_prompts(cfg, split, n, rng)):
    y1 = _response(task, prompt, rng, cfg.proposal_correct_rate)
    y2 = _response(task, prompt, rng, cfg.proposal_correct_rate)
    for _ in range(20):
      if y1 != y2:
        break
      y2 = _response(task, prompt, rng, cfg.proposal_correct_rate)
    if y1 == y2:
      y2 = task.corrupt(prompt, task.solve(prompt, rng), rng)
    r1, r2 = task.reward(prompt, y1), task.reward(prompt, y2)
    p1 = bt_alpha(r1, r2, cfg.bt_temperature, cfg.label_noise)
    first_wins = rng.random() < p1
    (yw, rw), (yl, rl) = ((y1, r1), (y2, r2)) if first_wins else ((y2, r2), (y1, r1))
    ex = {"id": f"{split}-pair-{i}", "task": task.name, "prompt": prompt,
          "chosen": yw, "rejected": yl, "alpha": p1 if first_wins else 1.0 - p1,
          "reward_chosen": rw, "reward_rejected": rl}
    ex.update(_edit_fields(task, prompt, yw, rng, "chosen"))
    ex.update(_edit_fields(task, prompt, yl, rng, "rejected"))
    out.append(ex)
  return out


def eval_prompts(cfg: WorldConfig, n: int):
  """Held-out (task name, prompt) pairs, disjoint from the training prompts."""
  return [(t.name, p) for t, p in _prompts(cfg, "eval", n, _rng(cfg, "eval", "prompts"))]


def oracle_reward(task_name: str, prompt: str, response: str) -> float:
  return get_task(task_name).reward(prompt, response)


def unpaired_from_pairs(pairs):
  """Unpaired (prompt, response, label) examples: chosen -> desirable (1), rejected -> 0.

  Works on any pair examples with "prompt", "chosen" and "rejected" (testbed or files).
  """
  out = []
  for ex in pairs:
    for side, label in (("chosen", 1), ("rejected", 0)):
      out.append({"id": f"{ex.get('id', '?')}-{side}", "task": ex.get("task"),
                  "prompt": ex["prompt"], "response": ex[side], "label": label})
  return out


def unpaired_examples(cfg: WorldConfig, n: int, split: str = "train"):
  """2n unpaired KTO examples derived from ``preference_pairs(cfg, n, split)``."""
  return unpaired_from_pairs(preference_pairs(cfg, n, split))


GROUP_ERROR_RATE = 0.1   # per-sample validity errors in the population-task groups


def _pick_group(task, prompt, rng, k, balanced):
  """k samples of the pick task: biased like the demos, or uniform over the options."""
  opts = task.options(prompt)
  out = []
  for _ in range(k):
    y = opts[int(rng.integers(len(opts)))] if balanced else task.solve(prompt, rng)
    if rng.random() < GROUP_ERROR_RATE:
      y = task.corrupt(prompt, y, rng)
    out.append(y)
  return out


def _group_score(task, prompt, group):
  if task.population:
    return task.population_score(prompt, group)
  return float(np.mean([task.reward(prompt, y) for y in group]))


def group_preferences(cfg: WorldConfig, n: int, split: str = "train", k: int | None = None):
  """Group-level preferences: two groups of k samples per prompt, one preferred.

  Population task (pick): one group is drawn from the biased demonstration distribution,
  the other uniformly over the offered letters (order random), each sample invalid with
  probability ``GROUP_ERROR_RATE``; group score s = ``population_score`` (minus the TV
  distance to uniform). Other tasks: both groups are k proposals as in
  ``preference_pairs``; s = mean oracle reward. The label is a Bradley-Terry draw on
  s_1 - s_2 with ``bt_temperature`` and ``label_noise``, exactly as for pairs; ``alpha`` is
  P(chosen group preferred).

  Returns:
    Examples {"prompt", "chosen": [k], "rejected": [k], "alpha", "score_chosen",
    "score_rejected", "task", "id"}; k defaults to ``cfg.group_size``.
  """
  k = cfg.group_size if k is None else k
  if k < 1:
    raise ValueError(f"group size must be >= 1, got {k}")
  rng = _rng(cfg, split, f"groups-{k}")
  out = []
  for i, (task, prompt) in enumerate(_prompts(cfg, split, n, rng)):
    if task.population:
      a, b = _pick_group(task, prompt, rng, k, False), _pick_group(task, prompt, rng, k, True)
      if rng.random() < 0.5:
        a, b = b, a
    else:
      a = [_response(task, prompt, rng, cfg.proposal_correct_rate) for _ in range(k)]
      b = [_response(task, prompt, rng, cfg.proposal_correct_rate) for _ in range(k)]
    s1, s2 = _group_score(task, prompt, a), _group_score(task, prompt, b)
    p1 = bt_alpha(s1, s2, cfg.bt_temperature, cfg.label_noise)
    first = rng.random() < p1
    (gw, sw), (gl, sl) = ((a, s1), (b, s2)) if first else ((b, s2), (a, s1))
    out.append({"id": f"{split}-group-{i}", "task": task.name, "prompt": prompt,
                "chosen": gw, "rejected": gl, "alpha": p1 if first else 1.0 - p1,
                "score_chosen": sw, "score_rejected": sl})
  return out


def groups_as_pairs(groups):
  """The first sample of each side: the pairwise (k = 1) view of group preferences."""
  return [dict(g, chosen=g["chosen"][0], rejected=g["rejected"][0]) for g in groups]
