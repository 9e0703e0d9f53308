"""A graded oracle for the testbed: string similarity to the correct answer.

The task oracles r* give 0 to any response that is not in the task's format (sort: a digit
list; add: digits; pick: one offered letter). Policies that start from a model that never
learned the task (a random base model, or a model fine-tuned on another task) score r* = 0
on every sample, so r*-win rates are exact 0.5 ties and say nothing. The graded oracle gives
partial credit for being *closer* to a correct answer, in any format:

  g(x, y) = 1 - lev(y, y*) / max(|y|, |y*|, 1)

with lev the Levenshtein distance (``tasks.minimal_edit``) and y* the oracle's answer
(``solve(x)``; for the population task pick, the nearest offered letter). g = 1 exactly when
y is a correct answer, and g is in [0, 1]. It is a diagnostic for the alignment studies
(Saeidi et al., "Insights into Alignment", arXiv 2404.14723), not a training signal.
"""
from __future__ import annotations

import numpy as np

from prefjax.testbed.tasks import get_task, minimal_edit


def similarity(a: str, b: str) -> float:
  """1 - Levenshtein(a, b) / max(|a|, |b|, 1)."""
  ops, _ = minimal_edit(a, b)
  return 1.0 - len(ops) / max(len(a), len(b), 1)


def graded_reward(task_name: str, prompt: str, response: str) -> float:
  """g(x, y) in [0, 1] (see the module docstring)."""
  task = get_task(task_name)
  if task.population:
    return max(similarity(response, o) for o in task.options(prompt))
  return similarity(response, task.solve(prompt))


def graded_win_rate(tasks, prompts, policy, reference) -> float:
  """Mean over samples of 1[g(policy) > g(ref)] + 0.5 * 1[tie]; all lists aligned [N]."""
  gp = np.array([graded_reward(t, p, y) for t, p, y in zip(tasks, prompts, policy)])
  gr = np.array([graded_reward(t, p, y) for t, p, y in zip(tasks, prompts, reference)])
  return float(((gp > gr) + 0.5 * (gp == gr)).mean()), float(gp.mean()), float(gr.mean())
