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

Reward sources are ONE registry (``register_reward_source``), named in ``config.rl.rewards``
as ``{name: weight}`` (a weighted sum) with keyword arguments in ``config.rl.reward_kwargs``:

  verifier          the task's exact score (reasoning-gym's ``score_answer`` on the answer
                    read in the requested format; ``tasks:`` data)
  format            1 when the response gives its answer in the requested format
  oracle            the testbed's exact reward r*(x, y) (registered by the testbed's
                    evaluator, ``prefjax.eval.testbed_eval``)
  length_penalty    -(completion tokens) / scale
  sequence_rm       a reward model trained first as a sub-stage (or by a ``reward`` stage)
  token_rm          a token-level reward model trained first on minimal edits
  rm:WORKDIR        the reward model of a finished prefjax run (its ``reward`` stage)
  calibrated:NAME   NAME's scores with a length bias removed (RC-Mean / RC-LWR, arXiv
                    2409.17407), the bias fitted once on samples of the reference policy
  rule              ``rule(prompt, completion)`` -> float or spans (Python API)

A factory is ``fn(env, arg, **kwargs) -> RewardSource``: ``env`` (``SourceEnv``) holds the
run context, the policy's start params and a sampler of the reference; ``arg`` is the text
after ``NAME:``; kwargs are checked against the factory's signature before anything runs.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from prefjax.errors import ConfigError, DataError
from prefjax.rewards import calibration
from prefjax.rewards.lowess import lowess

LEVELS = ("sequence", "span", "token")
MISSING_EOS = ("penalty", "mask", "none")


@dataclasses.dataclass
class RolloutView:
  """What a reward source may read: packed rows and their decoded text.

  batch: numpy rows [B, T] ``input_ids, target_ids, loss_mask, positions, segment_ids``.
  prompts, completions: B strings (completions decoded without the end token).
  tasks: B testbed task names (None off the testbed). eos_emitted: [B] bool.
  items: B ``prefjax.data.prompts.PromptItem`` (what a verifier scores against).
  cache: per-view memo shared by sources (e.g. one verifier pass for several sources).
  """
  batch: dict
  prompts: Sequence[str]
  completions: Sequence[str]
  eos_emitted: np.ndarray
  tasks: Sequence[str] | None = None
  items: Sequence | None = None
  cache: dict = dataclasses.field(default_factory=dict)

  @property
  def lengths(self) -> np.ndarray:
    """[B] completion tokens (the end token included when emitted)."""
    return np.asarray(self.batch["loss_mask"], np.float32).sum(-1)


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
# The registry.

@dataclasses.dataclass
class SourceEnv:
  """What a reward-source factory may use.

  ctx: the run context (config, tokenizer, mesh, data source with its ``taskset``, workdir).
  policy_params: the policy the stage starts from (reward models start from its backbone).
  summary: dict a source may add its own results to (e.g. a token RM's precision).
  reference_sample: ``fn(n) -> RolloutView`` of n samples of the reference policy on
    training prompts (for calibration), or None.
  """
  ctx: object = None
  policy_params: object = None
  summary: dict = dataclasses.field(default_factory=dict)
  reference_sample: Callable | None = None
  critic_backbone: object = None      # set by reward-model sources (a separate critic's start)

  @property
  def taskset(self):
    data = getattr(self.ctx, "data", None)
    return getattr(data, "taskset", None)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  name: str
  factory: Callable
  takes_arg: bool | str = False       # "NAME:ARG" (a path, an inner source); "optional"


REWARD_SOURCES: dict[str, SourceSpec] = {}


def register_reward_source(name: str, takes_arg: bool | str = False):
  """Registers ``factory(env, arg, **kwargs) -> RewardSource`` under ``name``; ``takes_arg``:
  False (``NAME`` only), True (``NAME:ARG`` only) or "optional" (either; arg None without)."""
  def deco(fn):
    if name in REWARD_SOURCES:
      raise ValueError(f"reward source {name!r} is already registered")
    REWARD_SOURCES[name] = SourceSpec(name, fn, takes_arg)
    return fn
  return deco


def split_name(key: str) -> tuple[str, str | None]:
  """"rm:/runs/x" -> ("rm", "/runs/x"); "verifier" -> ("verifier", None)."""
  kind, _, arg = key.partition(":")
  return kind, (arg or None)


def get_spec(key: str) -> SourceSpec:
  kind, arg = split_name(key)
  spec = REWARD_SOURCES.get(kind)
  if spec is None:
    close = difflib.get_close_matches(kind, list(REWARD_SOURCES), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ConfigError(f"config.rl.rewards: unknown reward source {key!r}{hint}; valid: "
                      f"{', '.join(sorted(REWARD_SOURCES))}")
  if spec.takes_arg is True and not arg:
    raise ConfigError(f"config.rl.rewards: reward source {kind!r} needs an argument "
                      f"({kind}:...)")
  if arg and spec.takes_arg is False:
    raise ConfigError(f"config.rl.rewards: reward source {kind!r} takes no argument, got {key!r}")
  return spec


def check_sources(rewards: dict, reward_kwargs: dict | None = None) -> None:
  """Names, weights and keyword arguments, before anything runs (one ConfigError)."""
  if not rewards:
    raise ConfigError("config.rl.rewards must name at least one reward source")
  reward_kwargs = dict(reward_kwargs or {})
  for key, w in rewards.items():
    spec = get_spec(key)
    if not isinstance(w, (int, float)) or not np.isfinite(w):
      raise ConfigError(f"config.rl.rewards.{key}: the weight must be a number, got {w!r}")
    kw = dict(reward_kwargs.get(key) or {})
    params = inspect.signature(spec.factory).parameters
    extra = [k for k in kw if k not in params or k in ("env", "arg")]
    if extra:
      valid = [k for k in params if k not in ("env", "arg")]
      raise ConfigError(f"config.rl.reward_kwargs.{key}: unknown argument {extra[0]!r}; valid: "
                        f"{', '.join(valid) or 'none'}")
    kind, arg = split_name(key)
    if kind == "calibrated":
      check_sources({arg: 1.0}, {arg: kw.get("inner_kwargs") or {}})
  for key in reward_kwargs:
    if key not in rewards:
      raise ConfigError(f"config.rl.reward_kwargs.{key}: not a source of config.rl.rewards "
                        f"({', '.join(rewards)})")


def make_source(key: str, env: SourceEnv | None = None, **kwargs) -> RewardSource:
  """The source ``key`` ("verifier", "rm:WORKDIR", ...) built in ``env``."""
  spec = get_spec(key)
  _, arg = split_name(key)
  src = spec.factory(env or SourceEnv(), arg, **kwargs)
  return dataclasses.replace(src, name=key) if src.name == spec.name != key else src


def build_sources(env: SourceEnv, rewards: dict, reward_kwargs: dict | None = None):
  """[(RewardSource, weight)] of ``config.rl.rewards`` (checked first)."""
  check_sources(rewards, reward_kwargs)
  kw = dict(reward_kwargs or {})
  return [(make_source(k, env, **dict(kw.get(k) or {})), float(w)) for k, w in rewards.items()]


# ---------------------------------------------------------------------------------------------
# Sources.

def task_scores(view: RolloutView, taskset) -> list:
  """The verifier's ``Score`` of each row (computed once per view)."""
  if "task_scores" not in view.cache:
    if view.items is None or any(getattr(x, "meta", None) is None for x in view.items):
      raise ConfigError("reward source 'verifier' needs verifiable prompts "
                        "(config.data.train = 'tasks:NAME')")
    view.cache["task_scores"] = taskset.scores([x.meta for x in view.items], view.completions)
  return view.cache["task_scores"]


def _taskset(env, name):
  ts = env.taskset
  if ts is None:
    raise ConfigError(f"reward source {name!r} needs a tasks: data source "
                      "(config.data.train = 'tasks:NAME[,NAME...]')")
  return ts


@register_reward_source("verifier")
def verifier_source(env, arg=None, *, lenient: bool = False) -> RewardSource:
  """The task's exact score in [0, 1] (``lenient=True``: the lenient read; for diagnosis)."""
  ts = _taskset(env, "verifier")

  def fn(view):
    return np.array([s.lenient if lenient else s.correct for s in task_scores(view, ts)],
                    np.float32)
  return RewardSource("verifier", "sequence", fn)


@register_reward_source("format")
def format_source(env, arg=None) -> RewardSource:
  """1 when the answer is given in the requested format (e.g. an answer tag), else 0."""
  ts = _taskset(env, "format")
  return RewardSource("format", "sequence", lambda view: np.array(
      [float(s.formatted) for s in task_scores(view, ts)], np.float32))


@register_reward_source("length_penalty")
def length_penalty_source(env, arg=None, *, scale: float = 100.0) -> RewardSource:
  """-(completion tokens) / scale."""
  if scale <= 0:
    raise ConfigError(f"config.rl.reward_kwargs.length_penalty.scale must be > 0, got {scale}")
  return RewardSource("length_penalty", "sequence", lambda view: -view.lengths / scale)


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


@register_reward_source("rm", takes_arg=True)
def workdir_rm_source(env, arg) -> RewardSource:
  """The reward model of a finished run (``WORKDIR/params/reward``), on the rollout's rows."""
  from prefjax.train.finished_run import load_run   # the train package stays out of prefjax.rl
  rm = load_run(arg, need=("reward",)).reward
  return sequence_rm_source(rm.graphdef, rm.params, f"rm:{arg}")


def rule_source(rule: Callable[[str, str], object], name: str = "rule") -> RewardSource:
  """``rule(prompt, completion)`` -> float (sequence level) or [(offset, value)] (spans)."""
  def probe(view):
    return [rule(p, y) for p, y in zip(view.prompts, view.completions)]

  def seq(view):
    return np.array(probe(view), np.float32)

  def spans(view):
    return probe(view)
  return RewardSource(name, "sequence", seq), RewardSource(name, "span", spans)


@register_reward_source("rule")
def _rule(env, arg=None, *, rule: Callable | None = None, level: str = "sequence",
          name: str = "rule"):
  if rule is None:
    raise ConfigError("reward source 'rule' needs reward_kwargs.rule (a Python function)")
  seq, spans = rule_source(rule, name)
  return spans if level == "span" else seq


@register_reward_source("calibrated", takes_arg=True)
def calibrated_source(env, arg, *, method: str = "rc_lwr", n: int = 64, frac: float = 0.3,
                      ratio: float = 4.0, alpha: float = 1.0,
                      inner_kwargs: dict | None = None) -> RewardSource:
  """``arg``'s scores minus a length bias b(length), fitted once on ``n`` samples of the
  reference policy: RC-Mean (window mean of width d = mean |l_i - l_j| / ratio) or RC-LWR
  (LOWESS with ``frac``, widened past the largest group of equal lengths); r_hat = r -
  alpha * b(l) (arXiv 2409.17407). ``inner_kwargs`` are the inner source's keyword
  arguments."""
  if method not in ("rc_mean", "rc_lwr"):
    raise ConfigError(f"config.rl.reward_kwargs.calibrated:{arg}.method: unknown {method!r}; "
                      "valid: rc_mean, rc_lwr")
  inner = make_source(arg, env, **dict(inner_kwargs or {}))
  if inner.level != "sequence":
    raise ConfigError(f"reward source 'calibrated:{arg}': only sequence-level sources can be "
                      "calibrated")
  if env.reference_sample is None:
    raise ConfigError(f"reward source 'calibrated:{arg}' needs a reference sampler (RL stages)")
  ref = env.reference_sample(n)
  r0 = np.asarray(inner.fn(ref), np.float64)
  l0 = ref.lengths.astype(np.float64)
  if method == "rc_lwr":
    # Short answers often share one length: widen the window past that tie group, or the
    # group's "fit" is a single sample's reward (``calibration.frac_for_ties``).
    frac = calibration.frac_for_ties(l0, frac)
    env.summary[f"calibrated:{arg}/lowess_frac"] = frac
    fit = np.asarray(lowess(r0, l0, frac=frac), np.float64)
    order = np.argsort(l0)
    xs, ys = l0[order], fit[order]
    bias_fn = lambda l: np.interp(l, xs, ys)
  else:
    d = float(np.mean(np.abs(l0[:, None] - l0[None, :]))) / ratio
    bias_fn = lambda l: np.nan_to_num(np.asarray(calibration.window_mean(
        np.asarray(l, np.float32), l0.astype(np.float32), r0.astype(np.float32),
        np.float32(d))[0]), nan=float(r0.mean()))
  env.summary[f"calibrated:{arg}/reference_mean"] = float(r0.mean())
  env.summary[f"calibrated:{arg}/reference_length_spearman"] = float(
      calibration.spearman(r0, l0))

  def fn(view):
    return (np.asarray(inner.fn(view), np.float32)
            - alpha * np.asarray(bias_fn(view.lengths), np.float32))
  return RewardSource(f"calibrated:{arg}", "sequence", fn)
