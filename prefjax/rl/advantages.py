"""Advantage estimators, one registry: GAE, GRPO, Dr.GRPO, RLOO, REINFORCE++.

Every estimator maps per-token rewards to per-token advantages on the same grid:

  estimator(rewards_bt, values_bt, mask_bt, *, group_size, **hparams)
      -> (advantages_bt, returns_bt)        both [B, T], 0 outside ``mask_bt``

Index t of a row is an *action*: the token ``target_ids[t]`` sampled after reading
``input_ids[:t+1]`` (the packed-row convention of ``prefjax.data.collate``); ``mask_bt`` is 1
on the completion's actions (the end-of-turn token included when it was emitted). The last
action of a row is terminal: nothing is bootstrapped after it.

Group estimators (GRPO, Dr.GRPO, RLOO) read rows in groups of ``group_size`` consecutive
rows that share a prompt (rows 0..k-1 are prompt 0's samples, and so on); the sequence score
of a row is sum_t rewards[t] * mask[t].

Whitening (``compute_advantages``) is computed over every valid token of the arrays it is
given: under ``jit`` on a sharded global batch that is the whole global batch.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp

from prefjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AdvantageSpec:
  name: str
  fn: Callable
  needs_values: bool        # reads a critic's values (GAE); others are critic-free
  grouped: bool             # needs group_size > 1 rows per prompt


_REGISTRY: dict[str, AdvantageSpec] = {}


def register(name: str, *, needs_values: bool = False, grouped: bool = False):
  """Decorator registering an estimator under ``name``; a duplicate name raises."""
  def deco(fn):
    if name in _REGISTRY:
      raise ValueError(f"advantage estimator {name!r} is already registered")
    _REGISTRY[name] = AdvantageSpec(name, fn, needs_values, grouped)
    return fn
  return deco


def get_spec(name: str) -> AdvantageSpec:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise ConfigError(f"unknown advantage estimator {name!r}; registered: "
                      f"{', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
  return sorted(_REGISTRY)


def check_kwargs(name: str, kwargs: dict) -> None:
  """``config.rl.advantage.kwargs`` against the estimator's signature (one ConfigError)."""
  params = inspect.signature(get_spec(name).fn).parameters
  allowed = [k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k != "group_size"]
  for k in kwargs:
    if k not in allowed:
      raise ConfigError(f"config.rl.advantage.kwargs.{k}: estimator {name!r} takes no {k!r}; "
                        f"valid: {', '.join(allowed) or 'none'}")


# ---------------------------------------------------------------------------------------------
# Helpers.

def masked_mean(x, mask, axis=None):
  mask = mask.astype(jnp.float32)
  return (x * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def whiten(x_bt, mask_bt, *, shift_mean: bool = True, eps: float = 1e-8):
  """(x - mean) / std over the valid entries (mean kept when ``shift_mean`` is False).

  The variance is the biased (population) one; entries outside the mask are returned as 0.
  """
  m = mask_bt.astype(jnp.float32)
  mean = masked_mean(x_bt, m)
  var = masked_mean(jnp.square(x_bt - mean), m)
  out = (x_bt - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    out = out + mean
  return out * m


def _sequence_scores(rewards_bt, mask_bt):
  return (rewards_bt * mask_bt).sum(-1)                                           # [B]


def _groups(x_b, group_size):
  b = x_b.shape[0]
  if group_size < 1 or b % group_size:
    raise ConfigError(f"batch of {b} rows is not a whole number of groups of {group_size}")
  return x_b.reshape(b // group_size, group_size)                                 # [G, K]


def _broadcast(adv_b, mask_bt):
  return adv_b[:, None] * mask_bt


def _reverse_discounted(x_bt, coef_bt):
  """y[t] = x[t] + coef[t] * y[t+1] (y[T] = 0), a reverse ``lax.scan`` over time."""
  def body(carry, xs):
    x_t, c_t = xs
    y = x_t + c_t * carry
    return y, y
  _, ys = jax.lax.scan(body, jnp.zeros(x_bt.shape[0], x_bt.dtype),
                       (x_bt.T, coef_bt.T), reverse=True)
  return ys.T


# ---------------------------------------------------------------------------------------------
# Estimators.

@register("gae", needs_values=True)
def gae(rewards_bt, values_bt, mask_bt, *, group_size: int = 1, gamma: float = 1.0,
        lam: float = 0.95):
  """Generalised advantage estimation (Schulman et al., arXiv 1506.02438).

    delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
    A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}        (A = 0 after the last action)
    R_t     = A_t + V_t                                         (the value target)

  m_{t+1} = 0 after the last completion action (the end token, or the last sampled token),
  so the episode terminates there: no value is bootstrapped past it.

  Args:
    rewards_bt, values_bt, mask_bt: [B, T] float.
  Returns:
    (advantages [B, T], returns [B, T]), 0 outside the mask.
  """
  del group_size
  m = mask_bt.astype(jnp.float32)
  v = values_bt.astype(jnp.float32) * m
  next_m = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
  next_v = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1)
  delta = (rewards_bt.astype(jnp.float32) + gamma * next_v * next_m - v) * m
  adv = _reverse_discounted(delta, gamma * lam * next_m) * m
  return adv, (adv + v) * m


@register("grpo", grouped=True)
def grpo(rewards_bt, values_bt, mask_bt, *, group_size: int, eps: float = 1e-6):
  """GRPO (Shao et al., "DeepSeekMath", arXiv 2402.03300): group-normalised scores.

    A_i = (s_i - mean_g(s)) / (std_g(s) + eps),   s_i = sum_t r_{i,t}, on every token of row i

  std is the population standard deviation over the group's k rows.
  """
  del values_bt
  s = _groups(_sequence_scores(rewards_bt, mask_bt), group_size)                  # [G, K]
  a = (s - s.mean(-1, keepdims=True)) / (s.std(-1, keepdims=True) + eps)
  adv = _broadcast(a.reshape(-1), mask_bt)
  return adv, _broadcast(_sequence_scores(rewards_bt, mask_bt), mask_bt)


@register("dr_grpo", grouped=True)
def dr_grpo(rewards_bt, values_bt, mask_bt, *, group_size: int):
  """Dr. GRPO (Liu et al., "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    A_i = s_i - mean_g(s)      (no division by the group's std)

  Its other half, the length-unbiased aggregation, is the PPO loss's ``aggregation="seq_sum"``.
  """
  del values_bt
  s = _groups(_sequence_scores(rewards_bt, mask_bt), group_size)
  a = s - s.mean(-1, keepdims=True)
  return _broadcast(a.reshape(-1), mask_bt), _broadcast(_sequence_scores(rewards_bt, mask_bt),
                                                        mask_bt)


@register("rloo", grouped=True)
def rloo(rewards_bt, values_bt, mask_bt, *, group_size: int):
  """RLOO (Ahmadian et al., "Back to Basics", arXiv 2402.14740): leave-one-out baseline.

    A_i = s_i - 1/(k-1) sum_{j != i} s_j  =  k/(k-1) (s_i - mean_g(s))
  """
  del values_bt
  if group_size < 2:
    raise ConfigError(f"rloo needs group_size >= 2 samples per prompt, got {group_size}")
  s = _groups(_sequence_scores(rewards_bt, mask_bt), group_size)
  loo = (s.sum(-1, keepdims=True) - s) / (group_size - 1)
  return _broadcast((s - loo).reshape(-1), mask_bt), _broadcast(
      _sequence_scores(rewards_bt, mask_bt), mask_bt)


@register("reinforce_pp")
def reinforce_pp(rewards_bt, values_bt, mask_bt, *, group_size: int = 1, gamma: float = 1.0):
  """REINFORCE++ (Hu, arXiv 2501.03262): discounted return-to-go, no critic.

    A_t = sum_{s >= t} gamma^(s-t) r_s     (per token; the KL penalty sits in r)

  then whitened over the global batch (``compute_advantages(..., whiten_advantages=True)``,
  the paper's global advantage normalisation; the config default for this estimator).
  """
  del values_bt, group_size
  m = mask_bt.astype(jnp.float32)
  next_m = jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)
  ret = _reverse_discounted(rewards_bt.astype(jnp.float32) * m, gamma * next_m) * m
  return ret, ret


def compute_advantages(name: str, rewards_bt, values_bt, mask_bt, *, group_size: int = 1,
                       whiten_rewards: bool = False, whiten_advantages: bool = False,
                       **hparams):
  """Runs estimator ``name`` with optional whitening over the whole (global) batch.

  Reward whitening only rescales (the mean is kept, as in TRL: shifting sparse rewards would
  put a reward on every token); advantage whitening shifts and rescales.

  Returns:
    (advantages [B, T], returns [B, T]).
  """
  spec = get_spec(name)
  mask_bt = mask_bt.astype(jnp.float32)
  if whiten_rewards:
    rewards_bt = whiten(rewards_bt, mask_bt, shift_mean=False)
  adv, ret = spec.fn(rewards_bt, values_bt, mask_bt, group_size=group_size, **hparams)
  if whiten_advantages:
    adv = whiten(adv, mask_bt)
  return adv, ret
