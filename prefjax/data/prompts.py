"""Prompt sources for stages that sample from the policy (RL, online preference learning, the
judge): a spec -> ``PromptItem`` lists for a training and a disjoint held-out split.

  tasks:NAME[,NAME...]   verifiable reasoning-gym tasks with exact scorers (prefjax.data.tasks)
  prompts:FILE           JSON Lines, one prompt per line: ``{"prompt": "..."}``,
                         ``{"messages": [{"role", "content"}, ...]}`` (the last turn a user
                         turn) or a plain JSON string
  any preference spec    (``hh:PATH``, ``alpaca_eval:PATH``, ``jsonl:PATH``, ...): the
                         distinct prompts of its pairs (``prefjax.data.file_sources``)

The testbed's prompts come from its own data source (``prefjax.train.data_source``).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

from prefjax.data.preference_files import PreferenceFileError, read_rows
from prefjax.errors import DataError

PROMPTS_PREFIX = "prompts:"


@dataclasses.dataclass(frozen=True)
class PromptItem:
  """One prompt to sample from.

  prompt: the user's text, or chat messages (the tokenizer's template renders them).
  task: the testbed or reasoning-gym task name (None for free-form prompts).
  meta: what a verifier needs to score a response (a ``prefjax.data.tasks.TaskPrompt``).
  """
  id: str
  prompt: Any
  task: str | None = None
  meta: Any = None

  @property
  def text(self) -> str:
    """The last user message's text (the prompt as a person reads it)."""
    if isinstance(self.prompt, str):
      return self.prompt
    users = [m["content"] for m in self.prompt if m.get("role") == "user"]
    return users[-1] if users else str(self.prompt[-1].get("content", ""))


def is_prompts_spec(spec: str) -> bool:
  return spec.startswith(PROMPTS_PREFIX)


def _parse_line(obj, where: str):
  if isinstance(obj, str):
    return obj
  if isinstance(obj, dict) and isinstance(obj.get("prompt"), (str, list)):
    return obj["prompt"]
  if isinstance(obj, dict) and isinstance(obj.get("messages"), list):
    msgs = obj["messages"]
    if msgs and msgs[-1].get("role") == "assistant":
      msgs = msgs[:-1]                     # a response given with the prompt is not sampled
    if not msgs or any(not isinstance(m, dict) or "content" not in m for m in msgs):
      raise DataError(f"{where}: field 'messages' needs role/content turns")
    return [{"role": m.get("role", "user"), "content": m["content"]} for m in msgs]
  raise DataError(f"{where}: expected a JSON string or an object with 'prompt' or 'messages'")


def read_prompts_file(path: str) -> list[PromptItem]:
  """``prompts:FILE`` -> items (ids ``FILE:LINE``); a bad line is one DataError naming it."""
  try:
    _, rows, bad = read_rows(path)
  except PreferenceFileError as e:
    raise DataError(str(e)) from None
  if bad:
    loc, reason = bad[0]
    raise DataError(f"{path}:{loc}: {reason}")
  items = []
  for loc, obj in rows:
    where = f"{path}:{loc}"
    items.append(PromptItem(id=where, prompt=_parse_line(obj, where)))
  if not items:
    raise DataError(f"{path}: no prompts")
  return items


def prompts_of_pairs(examples: Sequence[dict]) -> list[PromptItem]:
  """The distinct prompts of preference examples, in first-seen order."""
  seen, out = set(), []
  for e in examples:
    key = json.dumps(e["prompt"], sort_keys=True)
    if key not in seen:
      seen.add(key)
      out.append(PromptItem(id=str(e.get("id", len(out))), prompt=e["prompt"]))
  return out


def split_items(items: Sequence[PromptItem], n_eval: int, seed: int):
  """(train, eval): a seeded held-out set of ``n_eval`` distinct prompts."""
  order = np.random.default_rng(seed).permutation(len(items))
  n_eval = min(n_eval, len(items) - 1)
  held = set(order[:n_eval].tolist())
  return ([x for i, x in enumerate(items) if i not in held],
          [x for i, x in enumerate(items) if i in held])
