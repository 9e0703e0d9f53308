"""Rewards are one interface: sources -> rewards [B, T] on the completion's action grid.

Index t of a row is the action target_ids[t] (``prefjax.data.collate``'s packed rows);
``mask_bt`` (the rollout's completion mask) is 1 on the completion's actions, the end token
included when it was emitted. A source returns one of three levels:

  "sequence"  [B]        a score placed on the LAST completion action of each row: the end
                         token when it was emitted, else the last sampled token;
  "span"      per row a list of (offset, value): value placed at completion action
                         ``first + offset`` (the end of a span, offsets from 0);
  "token"     [B, T]     dense per-token rewards, kept on the completion actions.

``compute_rewards`` sums weight * placed reward over sources and applies the missing-end-token
policy to rows that never emitted it: "penalty" adds ``missing_eos_penalty`` on their last
action, "mask" drops the row from the loss (``valid_b`` = 0), "none" leaves it. A source that
returns NaN/inf or the wrong shape raises one ``DataError`` naming it.

Sources (``make_source``): "oracle" (the testbed's exact reward; the only importer of the
world outside ``prefjax.testbed``), "sequence_rm" (``prefjax.rewards.model.RewardModel``),
"token_rm" (``prefjax.rewards.token_model.TokenRewardModel``), "rule" (a Python function of
(prompt, completion) returning a float, or a list of (offset, value) spans).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from prefjax.errors import ConfigError, DataError

LEVELS = ("sequence", "span", "token")
MISSING_EOS = ("penalty", "mask", "none")
SOURCES = ("oracle", "sequence_rm", "token_rm", "rule")


@dataclasses.dataclass
class RolloutView:
  """What a reward source may read: packed rows and their decoded text.

  batch: numpy rows [B, T] ``input_ids, target_ids, loss_mask, positions, segment_ids``.
  prompts, completions: B strings (completions decoded without the end token).
  tasks: B testbed task names (None off the testbed). eos_emitted: [B] bool.
  """
  batch: dict
  prompts: Sequence[str]
  completions: Sequence[str]
  eos_emitted: np.ndarray
  tasks: Sequence[str] | None = None


@dataclasses.dataclass(frozen=True)
class RewardSource:
  name: str
  level: str
  fn: Callable     # RolloutView -> [B] | [B, T] | list of B lists of (offset, value)


# ---------------------------------------------------------------------------------------------
# Placement.

def last_action_index(mask_bt) -> np.ndarray:
  """[B] index of the last completion action (0 for a row without any)."""
  m = np.asarray(mask_bt) > 0
  t = m.shape[-1]
  return np.where(m.any(-1), t - 1 - np.argmax(m[:, ::-1], axis=-1), 0)


def first_action_index(mask_bt) -> np.ndarray:
  """[B] index of the first completion action (0 for a row without any)."""
  return np.argmax(np.asarray(mask_bt) > 0, axis=-1)


def place_sequence(scores_b, mask_bt) -> np.ndarray:
  """[B] scores -> [B, T]: each on its row's last completion action."""
  m = np.asarray(mask_bt, np.float32)
  out = np.zeros(m.shape, np.float32)
  rows = np.arange(m.shape[0])
  out[rows, last_action_index(m)] = np.asarray(scores_b, np.float32) * (m.sum(-1) > 0)
  return out


def place_spans(spans, mask_bt, name: str = "span") -> np.ndarray:
  """Per-row lists of (offset, value) -> [B, T] at completion action first + offset."""
  m = np.asarray(mask_bt, np.float32)
  out = np.zeros(m.shape, np.float32)
  first, n = first_action_index(m), m.sum(-1).astype(int)
  if len(spans) != m.shape[0]:
    raise DataError(f"reward source {name!r} returned {len(spans)} rows of spans, expected "
                    f"{m.shape[0]}")
  for i, row in enumerate(spans):
    for off, v in row:
      if not 0 <= int(off) < n[i]:
        raise DataError(f"reward source {name!r}: span end {off} is outside row {i}'s "
                        f"{n[i]} completion tokens")
      out[i, first[i] + int(off)] += float(v)
  return out


def _check(name, arr, shape):
  arr = np.asarray(arr, np.float32)
  if arr.shape != shape:
    raise DataError(f"reward source {name!r} returned shape {arr.shape}, expected {shape}")
  bad = ~np.isfinite(arr)
  if bad.any():
    row = int(np.argwhere(bad)[0][0])
    raise DataError(f"reward source {name!r} returned a non-finite reward (row {row})")
  return arr


def compute_rewards(sources: Sequence[tuple[RewardSource, float]], view: RolloutView, *,
                    missing_eos: str = "penalty", missing_eos_penalty: float = -1.0):
  """Weighted sum of placed rewards and the missing-end-token policy.

  Returns:
    (rewards [B, T] float32, valid [B] float32 (0: row masked), metrics {reward/<name>: mean
    raw score per row}).
  """
  if missing_eos not in MISSING_EOS:
    raise ConfigError(f"config.rl.missing_eos: unknown policy {missing_eos!r}; valid: "
                      f"{', '.join(MISSING_EOS)}")
  mask = np.asarray(view.batch["loss_mask"], np.float32)
  b, t = mask.shape
  total = np.zeros((b, t), np.float32)
  metrics = {}
  for src, w in sources:
    out = src.fn(view)
    if src.level == "sequence":
      s = _check(src.name, out, (b,))
      placed = place_sequence(s, mask)
    elif src.level == "token":
      placed = _check(src.name, out, (b, t)) * mask
    elif src.level == "span":
      placed = _check(src.name, place_spans(out, mask, src.name), (b, t))
    else:
      raise ConfigError(f"reward source {src.name!r}: unknown level {src.level!r}")
    metrics[f"reward/{src.name}"] = float(placed.sum(-1).mean())
    total += float(w) * placed
  missing = ~np.asarray(view.eos_emitted, bool)
  valid = np.ones(b, np.float32)
  if missing_eos == "penalty":
    total += place_sequence(missing * np.float32(missing_eos_penalty), mask)
  elif missing_eos == "mask":
    valid = (~missing).astype(np.float32)
    total *= valid[:, None]
  metrics["reward/missing_eos_fraction"] = float(missing.mean())
  metrics["reward/total"] = float(total.sum(-1).mean())
  return total, valid, metrics


# ---------------------------------------------------------------------------------------------
# Sources.

def oracle_source() -> RewardSource:
  """The testbed's exact oracle r*(x, y) in [0, 1] on the decoded completion."""
  from prefjax.testbed import world

  def fn(view):
    if view.tasks is None:
      raise ConfigError("reward source 'oracle' needs testbed prompts (tasks are unknown)")
    return np.array([world.oracle_reward(t, p, y) for t, p, y in
                     zip(view.tasks, view.prompts, view.completions)], np.float32)
  return RewardSource("oracle", "sequence", fn)


@functools.partial(jax.jit, static_argnames=("graphdef", "method"))
def _model_call(graphdef, params, batch, method):
  return getattr(nnx.merge(graphdef, params), method)(batch)


def sequence_rm_source(graphdef, params, name: str = "sequence_rm") -> RewardSource:
  """A ``RewardModel``'s scalar reward of each (prompt, completion) row."""
  return RewardSource(name, "sequence",
                      lambda view: np.asarray(_model_call(graphdef, params, view.batch, "rewards")))


def token_rm_source(graphdef, params, name: str = "token_rm") -> RewardSource:
  """A ``TokenRewardModel``'s per-token rewards of each row (dense)."""
  return RewardSource(name, "token", lambda view: np.asarray(
      _model_call(graphdef, params, view.batch, "token_rewards")))


def rule_source(rule: Callable[[str, str], object], name: str = "rule") -> RewardSource:
  """``rule(prompt, completion)`` -> float (sequence level) or [(offset, value)] (spans)."""
  def probe(view):
    return [rule(p, y) for p, y in zip(view.prompts, view.completions)]

  def seq(view):
    return np.array(probe(view), np.float32)

  def spans(view):
    return probe(view)
  return RewardSource(name, "sequence", seq), RewardSource(name, "span", spans)


def make_source(kind: str, **kw) -> RewardSource:
  """A source by config name; model sources need ``graphdef`` and ``params``, rules ``rule``
  (and ``level``: "sequence" or "span")."""
  if kind == "oracle":
    return oracle_source()
  if kind == "sequence_rm":
    return sequence_rm_source(kw["graphdef"], kw["params"])
  if kind == "token_rm":
    return token_rm_source(kw["graphdef"], kw["params"])
  if kind == "rule":
    seq, spans = rule_source(kw["rule"], kw.get("name", "rule"))
    return spans if kw.get("level", "sequence") == "span" else seq
  raise ConfigError(f"config.rl.rewards: unknown reward source {kind!r}; valid: "
                    f"{', '.join(SOURCES)}")


# ---------------------------------------------------------------------------------------------
# The testbed behind the oracle: the only place in prefjax.rl that reads the world (through
# the run's testbed data source, so ``data.train = "testbed:TASK"`` selects the tasks).

def testbed_prompts(c, n: int, split: str = "train"):
  """n (task name, prompt) pairs: training prompts (disjoint from the eval prompts)."""
  from prefjax.testbed import source, world
  if split == "train":
    return [(e["task"], e["prompt"]) for e in world.sft_examples(source.world_config(c), n,
                                                                  split="train")]
  return source.eval_prompts(c, n)


def testbed_pairs(c, n: int, split: str = "train"):
  """Labelled preference pairs, with the minimal edits and flaw masks of both sides."""
  from prefjax.testbed import source
  return source.examples(c, "pairwise", split, n)
