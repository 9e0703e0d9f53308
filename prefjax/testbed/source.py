"""The testbed as a data source: examples of every kind from ``config.testbed``.

``data.train = "testbed"`` (the default) or ``"testbed:TASK[,TASK...]"`` selects the
synthetic world; this module, through ``prefjax.train.data_source``, is the only place the
library reaches into the world for data (the evaluator, ``prefjax.eval.testbed_eval``,
reaches it for the oracle).
"""
from __future__ import annotations

import dataclasses

from prefjax.errors import ConfigError
from prefjax.testbed import length_bias, world
from prefjax.testbed.tasks import get_task

PREFIX = "testbed"


def is_testbed(spec: str) -> bool:
  return spec == PREFIX or spec.startswith(PREFIX + ":")


def world_config(c, spec: str | None = None) -> world.WorldConfig:
  """The world of ``config.testbed``; ``testbed:a,b`` overrides its task list."""
  t = c.testbed
  tasks = tuple(t.tasks)
  spec = spec if spec is not None else c.data.train
  if spec and spec.startswith(PREFIX + ":"):
    tasks = tuple(x for x in spec[len(PREFIX) + 1:].split(",") if x)
  return world.WorldConfig(tasks=tasks, seed=t.seed, sft_error_rate=t.sft_error_rate,
                           proposal_correct_rate=t.proposal_correct_rate,
                           bt_temperature=t.bt_temperature, label_noise=t.label_noise,
                           group_size=t.group_size)


def examples(c, kind: str, split: str, n: int, spec: str | None = None) -> list[dict]:
  """``n`` examples of ``kind`` (sft, pairwise, multi, unpaired) from the ``split`` prompts.

  Training and evaluation prompts are disjoint (``world.is_heldout``).
  """
  wcfg = world_config(c, spec)
  split = "train" if split == "train" else "eval"
  if kind == "sft":
    if split == "train" and c.testbed.start == "other_tasks":
      wcfg = dataclasses.replace(wcfg, tasks=tuple(c.testbed.sft_tasks))
    return world.sft_examples(wcfg, n, split)
  if kind == "pairwise":
    return world.preference_pairs(wcfg, n, split)
  if kind == "unpaired":
    return world.unpaired_examples(wcfg, n, split)
  if kind == "multi":
    return world.group_preferences(wcfg, n, split)
  raise ConfigError(f"config.data.train: the testbed has no {kind!r} examples "
                    "(kinds: sft, pairwise, multi, unpaired)")


def eval_prompts(c, n: int) -> list[tuple[str, str]]:
  """Held-out (task, prompt) pairs for the oracle judge."""
  return world.eval_prompts(world_config(c), n)


def train_prompts(c, n: int) -> list[tuple[str, str]]:
  """Training (task, prompt) pairs for sampling stages (disjoint from ``eval_prompts``)."""
  return [(e["task"], e["prompt"]) for e in world.sft_examples(world_config(c), n, split="train")]


_WORLD_EXAMPLES = {"sft": world.sft_examples, "pairwise": world.preference_pairs,
                   "unpaired": world.unpaired_examples, "multi": world.group_preferences}


def world_examples(wcfg: world.WorldConfig, kind: str, n: int, split: str = "train"):
  """``n`` examples of ``kind`` (sft, pairwise, multi, unpaired) drawn from the world ``wcfg``."""
  return _WORLD_EXAMPLES[kind](wcfg, n, split)


def reward_pairs(c, data: str, split: str, n: int) -> list[dict]:
  """Pairs for a reward model from ``config.reward.data``: "world" (testbed pairs) or
  "length_bias" (the length-biased labeller of ``config.reward.length_bias``)."""
  wcfg = world_config(c, PREFIX)
  if data == "world":
    return world.preference_pairs(wcfg, n, split="train" if split == "train" else "eval")
  lb = length_bias.LengthBias(**c.reward.length_bias.to_dict())
  return length_bias.length_bias_pairs(wcfg, lb, n, split=split)


def check_tasks(names) -> None:
  """Raises KeyError / ValueError for a name that is not a testbed task."""
  for name in names:
    get_task(name)


def task_pairs(c, names: tuple[str, ...], n: int, split: str = "eval") -> list[dict]:
  """``n`` preference pairs of the tasks ``names`` in the world of ``config.testbed``
  (``c`` None: the default world), with the exact Bradley-Terry alpha of their labels."""
  wcfg = (dataclasses.replace(world_config(c, PREFIX), tasks=names) if c is not None
          else world.WorldConfig(tasks=names))
  return world.preference_pairs(wcfg, n, split=split)
