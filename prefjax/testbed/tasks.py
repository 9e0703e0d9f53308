"""Testbed tasks: short text prompts, an exact oracle reward r*(x, y), and corruptions.

Every task defines
  sample_prompt(rng) -> str           a prompt drawn from the task's prompt distribution;
  solve(prompt, rng) -> str           a correct response (one of several for `pick`);
  reward(prompt, response) -> float   the oracle r*(x, y) in [0, 1], 1 = correct;
  corrupt(prompt, response, rng)      a flawed response a small edit away from a correct one.
Population tasks also define ``population_score(prompt, responses)``: how close a group of
samples is to the target population property (higher is better).
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

_LETTERS = "abcdefghij"


def _parse_digits(s: str) -> list[int] | None:
  parts = s.split(",")
  if not parts or any(len(p) != 1 or not p.isdigit() for p in parts):
    return None
  return [int(p) for p in parts]


class SortTask:
  """x = "sort:5,2,8", y* = "2,5,8". r* = 1/2 [same multiset] + 1/2 (positions right)/n."""
  name = "sort"
  population = False

  def __init__(self, min_n: int = 3, max_n: int = 6):
    self.min_n, self.max_n = min_n, max_n

  def sample_prompt(self, rng):
    n = int(rng.integers(self.min_n, self.max_n + 1))
    return "sort:" + ",".join(str(int(d)) for d in rng.integers(0, 10, n))

  def _target(self, prompt):
    return sorted(_parse_digits(prompt[len("sort:"):]))

  def solve(self, prompt, rng=None):
    return ",".join(map(str, self._target(prompt)))

  def reward(self, prompt, response):
    target, got = self._target(prompt), _parse_digits(response)
    if got is None:
      return 0.0
    same = Counter(got) == Counter(target)
    right = sum(a == b for a, b in zip(got, target))
    return 0.5 * float(same) + 0.5 * right / max(len(target), len(got))

  def corrupt(self, prompt, response, rng):
    """Same-length flaws (a swap of two neighbours, or a changed digit), so preferences
    carry no length signal here; the length-bias study builds its own."""
    d = _parse_digits(response)
    idx = [i for i in range(len(d) - 1) if d[i] != d[i + 1]]
    if idx and rng.random() < 0.5:                      # swap two neighbours that differ
      i = int(rng.choice(idx))
      d[i], d[i + 1] = d[i + 1], d[i]
      return ",".join(map(str, d))
    i = int(rng.integers(len(d)))                       # change one digit
    d[i] = (d[i] + int(rng.integers(1, 10))) % 10
    return ",".join(map(str, d))


class AddTask:
  """x = "add:47+85", y* = "132". r* = digits right (aligned from the right) / max length."""
  name = "add"
  population = False

  def __init__(self, max_digits: int = 2):
    self.max_digits = max_digits

  def sample_prompt(self, rng):
    hi = 10 ** self.max_digits
    a, b = rng.integers(0, hi, 2)
    return f"add:{int(a)}+{int(b)}"

  def solve(self, prompt, rng=None):
    a, b = prompt[len("add:"):].split("+")
    return str(int(a) + int(b))

  def reward(self, prompt, response):
    target = self.solve(prompt)
    if not response.isdigit():
      return 0.0
    right = sum(a == b for a, b in zip(reversed(response), reversed(target)))
    return right / max(len(target), len(response))

  def corrupt(self, prompt, response, rng):
    d = list(response)
    i = int(rng.integers(len(d)))
    if rng.random() < 0.2 and len(d) > 1:              # drop a digit
      del d[i]
    else:                                               # change a digit
      d[i] = str((int(d[i]) + int(rng.integers(1, 10))) % 10)
    return "".join(d)


class PickTask:
  """Population task. x = "pick:cfa", y = one letter of the set; r* = 1[y in set].

  The goal is a property of the population of samples: a uniform distribution over the
  offered letters. ``population_score`` is the negative total-variation distance between
  the samples' empirical distribution and uniform (0 is perfect).
  The demonstrations are biased towards the first letter (``bias``), so an SFT model is
  unbalanced and group-level preferences have something to fix.
  """
  name = "pick"
  population = True

  def __init__(self, min_k: int = 2, max_k: int = 4, bias: float = 0.6):
    self.min_k, self.max_k, self.bias = min_k, max_k, bias

  def sample_prompt(self, rng):
    k = int(rng.integers(self.min_k, self.max_k + 1))
    return "pick:" + "".join(rng.choice(list(_LETTERS), k, replace=False))

  def options(self, prompt):
    return prompt[len("pick:"):]

  def solve(self, prompt, rng=None):
    opts = self.options(prompt)
    if rng is None or rng.random() < self.bias:
      return opts[0]
    return opts[int(rng.integers(len(opts)))]

  def reward(self, prompt, response):
    return float(len(response) == 1 and response in self.options(prompt))

  def corrupt(self, prompt, response, rng):
    bad = [c for c in _LETTERS if c not in self.options(prompt)]
    return str(rng.choice(bad))

  def population_score(self, prompt, responses):
    opts = self.options(prompt)
    counts = Counter(r for r in responses)
    n = max(len(responses), 1)
    tv = 0.5 * sum(abs(counts.get(o, 0) / n - 1 / len(opts)) for o in opts)
    tv += 0.5 * sum(c / n for r, c in counts.items() if r not in opts)
    return -tv

  def entropy(self, responses):
    n = len(responses)
    return -sum(c / n * math.log(c / n) for c in Counter(responses).values()) if n else 0.0


TASKS = {"sort": SortTask, "add": AddTask, "pick": PickTask}


def get_task(name: str, **kwargs):
  if name not in TASKS:
    raise ValueError(f"unknown testbed task {name!r}; tasks: {', '.join(sorted(TASKS))}")
  return TASKS[name](**kwargs)


def minimal_edit(flawed: str, correct: str):
  """The smallest character edit turning ``flawed`` into ``correct`` (Levenshtein).

  Returns (ops, flawed_mask): ops is a list of ("sub"|"del"|"ins", i_flawed, char) and
  flawed_mask[i] = 1 where the i-th character of ``flawed`` is substituted or deleted
  (insertions mark the character before which they go, or the last one).
  """
  n, m = len(flawed), len(correct)
  dp = np.zeros((n + 1, m + 1), dtype=np.int32)
  dp[:, 0] = np.arange(n + 1)
  dp[0, :] = np.arange(m + 1)
  for i in range(1, n + 1):
    for j in range(1, m + 1):
      dp[i, j] = min(dp[i - 1, j] + 1, dp[i, j - 1] + 1,
                     dp[i - 1, j - 1] + (flawed[i - 1] != correct[j - 1]))
  ops, mask = [], [0] * n
  i, j = n, m
  while i > 0 or j > 0:
    if i > 0 and j > 0 and dp[i, j] == dp[i - 1, j - 1] + (flawed[i - 1] != correct[j - 1]):
      if flawed[i - 1] != correct[j - 1]:
        ops.append(("sub", i - 1, correct[j - 1]))
        mask[i - 1] = 1
      i, j = i - 1, j - 1
    elif i > 0 and dp[i, j] == dp[i - 1, j] + 1:
      ops.append(("del", i - 1, ""))
      mask[i - 1] = 1
      i -= 1
    else:
      ops.append(("ins", i, correct[j - 1]))
      if n:
        mask[min(i, n - 1)] = 1
      j -= 1
  return list(reversed(ops)), mask
