"""The study registry and the pieces every study shares: settings, hyper-parameter choice on
the validation prompts, and examples built from a scored sample pool.

A study is a module with a ``run(env, settings) -> rows`` function and a ``report(rows,
settings) -> dict`` (what ``report.write`` gets), registered once:

    @register_study("mdpo", sizes=Sizes(...), quick_sizes=Sizes(...), budget={...})
    def run(env, settings): ...

``scripts/study_real.py --study NAME`` looks the name up (``registry.get_study``), loads the model once
(``common.load_env``) and writes what ``report`` returns.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import time
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from prefjax.errors import ConfigError
from prefjax.rl.online import make_examples
from prefjax.studies.real.common import Env, Pool, Sizes


@dataclasses.dataclass(frozen=True)
class Settings:
  """One invocation: the study, full or quick sizes, seeds and where results go.
  ``budget`` holds the study's own knobs (steps, hyper-parameter grid, ...)."""
  study: str
  out: str
  seeds: int
  quick: bool
  sizes: Sizes
  budget: dict
  samples_dir: str | None = None   # the start model's cached samples (shared by studies)

  def new_rows(self) -> "RowLog":
    """The list a study's ``run`` appends its rows to (also ``OUT/rows.jsonl``)."""
    return RowLog(os.path.join(self.out, "rows.jsonl"))


@dataclasses.dataclass(frozen=True)
class StudyDef:
  name: str
  paper: str                   # arXiv id
  run: Callable                # (env, settings) -> rows
  report: Callable             # (rows, settings) -> kwargs of report.write
  sizes: Sizes
  quick_sizes: Sizes
  budget: dict
  quick_budget: dict

  def settings(self, out: str, seeds: int | None = None, quick: bool = False,
               samples_dir: str | None = None, overrides: dict | None = None) -> Settings:
    budget = dict(self.quick_budget if quick else self.budget)
    for k, v in (overrides or {}).items():
      if k not in budget:
        raise ConfigError(f"--set {k}: not a setting of study {self.name!r}; valid: "
                          f"{', '.join(sorted(budget))}")
      budget[k] = tuple(v) if isinstance(v, list) and isinstance(budget[k], tuple) else v
    n = seeds or budget.get("seeds", 3)
    budget.pop("seeds", None)
    return Settings(self.name, out, n, quick, self.quick_sizes if quick else self.sizes, budget,
                    samples_dir or os.path.join(out, "samples"))


STUDIES: dict[str, StudyDef] = {}

# The keys that name a row's arm, printed first in its progress line.
ARM_KEYS = ("method", "start", "size", "noise", "reward", "checkpoint", "step", "seed")


class RowLog(list):
  """A study's rows: each appended row is also written to ``path`` (one JSON line, flushed)
  and printed in one line, so that a long study shows its progress and the runs it finished
  survive a crash or a stop. ``results.json`` is written from the full list at the end."""

  def __init__(self, path: str):
    super().__init__()
    self.path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    open(path, "w").close()

  def append(self, row: dict) -> None:
    super().append(row)
    with open(self.path, "a") as f:
      f.write(json.dumps(row, default=float) + "\n")
    arm = " ".join(f"{k}={row[k]}" for k in ARM_KEYS if k in row)
    scores = " ".join(f"{k}={row[k]:.3f}" for k in ("accuracy", "gain", "win_rate", "kl",
                                                   "rm_accuracy") if isinstance(row.get(k), float))
    tqdm.write(f"[{len(self)}] {arm}: {scores}")

  def extend(self, rows) -> None:
    for r in rows:
      self.append(r)

  def __iadd__(self, rows):
    self.extend(rows)
    return self


def register_study(name: str, *, paper: str, report: Callable, sizes: Sizes,
                   quick_sizes: Sizes, budget: dict, quick_budget: dict):
  def deco(fn):
    if name in STUDIES:
      raise ValueError(f"study {name!r} is already registered")
    STUDIES[name] = StudyDef(name, paper, fn, report, sizes, quick_sizes, budget, quick_budget)
    return fn
  return deco


def seeds(settings: Settings):
  """The study's seeds with a progress bar."""
  return tqdm(range(settings.seeds), desc=f"{settings.study}: seeds")


# ----------------------------------------------------------------------------- examples
def examples_from_pool(kind: str, pool: Pool, scores: np.ndarray | None = None, *,
                       pairs: str = "best_worst") -> list[dict]:
  """Training examples of ``kind`` (pairwise / multi / unpaired) from each prompt's scored
  samples (``prefjax.rl.online.make_examples``); ``scores [N, K]`` default to the verifier's."""
  scores = pool.correct if scores is None else scores
  out = []
  for item, responses, s in zip(pool.items, pool.responses, scores):
    out += make_examples(kind, item, responses, s, pairs=pairs, uid=item.id)
  return out


def minimal_edit(response: str, answer: str) -> str:
  """``response`` with its final ``Answer: X`` line's X replaced by ``answer`` (a line
  appended when there is none)."""
  lines = response.rstrip("\n").split("\n")
  m = re.match(r"^(\s*Answer:\s*)(.*?)(\s*)$", lines[-1])
  if m:
    lines[-1] = m.group(1) + answer + m.group(3)
    return "\n".join(lines)
  return response.rstrip("\n") + "\nAnswer: " + answer


def edits(pool, taskset) -> list[dict]:
  """Edit examples (original = a wrong sample, edited = its minimal fix) of every prompt."""
  out = []
  for item, rs, c in zip(pool.items, pool.responses, pool.correct):
    for k, (r, x) in enumerate(zip(rs, c)):
      if x > 0 or not r.strip():
        continue
      e = minimal_edit(r, str(item.meta.answer))
      if e != r and taskset.score(item.meta, e).correct:
        out.append({"id": f"{item.id}/{k}", "prompt": item.prompt, "original": r,
                    "edited": e, "flawed_mask": []})
  return out


def sft_examples(items: Sequence, responses: Sequence[str]) -> list[dict]:
  return [{"id": x.id, "prompt": x.prompt, "response": r} for x, r in zip(items, responses)]


# ----------------------------------------------------------------------------- tuning
def grid(space: dict) -> list[dict]:
  """Every combination of ``{name: [values]}`` (the hyper-parameter budget of a method)."""
  keys = list(space)
  return [dict(zip(keys, v)) for v in itertools.product(*(space[k] for k in keys))]


def tune(env: Env, train_fn: Callable, candidates: Sequence[dict], *,
         start_val_accuracy: float | None = None):
  """Trains once per hyper-parameter setting, keeps the one with the best greedy verified
  accuracy on the validation prompts (the first on ties). Returns (params, setting, val
  accuracies of every setting, seconds). One setting has nothing to choose: it is trained
  and not judged (its val accuracy is None)."""
  t0 = time.perf_counter()
  if len(candidates) == 1:
    return train_fn(**candidates[0]), candidates[0], [None], time.perf_counter() - t0
  best, vals = None, []
  for hp in candidates:
    params = train_fn(**hp)
    acc = env.accuracy(params, "val")
    vals.append(acc)
    if best is None or acc > best[2]:
      best = (params, hp, acc)
    else:
      del params
  return best[0], best[1], vals, time.perf_counter() - t0


def tune_once(env: Env, chosen: dict, key, train_fn: Callable, space: dict):
  """``train_fn``'s params at the setting chosen for ``key``: tuned over ``grid(space)`` on
  the validation prompts the first time ``key`` is seen (``tune``; the choice is kept in
  ``chosen``), that setting again afterwards. Returns (params, setting, best validation
  accuracy; None when reused: validation accuracy is only for the choice)."""
  if key in chosen:
    return train_fn(**chosen[key]), chosen[key], None
  params, hp, vals, _ = tune(env, train_fn, grid(space))
  chosen[key] = hp
  return params, hp, max(vals)


def judge_fields(j: dict, reference: str = "reference_accuracy") -> dict:
  """A row's metrics from ``env.judge``: held-out verified accuracy, the start model's (named
  ``reference``), the gain, win rate, KL to the start, length and format rate."""
  return {"accuracy": j["verified_accuracy/policy"], reference: j["verified_accuracy/reference"],
          "gain": j["verified_accuracy/policy"] - j["verified_accuracy/reference"],
          "win_rate": j["win_rate_vs_reference"], "kl": j["kl_to_reference"],
          "length": j["length/policy"], "format_rate": j["format_rate/policy"]}


def judged_row(env: Env, params, **keys) -> dict:
  """The test-split judge of ``params`` against the start model, with ``keys`` in front."""
  return dict(keys, **env.judge(params, "test"))
