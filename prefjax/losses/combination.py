"""Weighted sums of registered pairwise losses, e.g. ``{"dpo": 1.0, "sppo_hard": 0.1}``.

A combination is itself a pairwise loss: it takes the pairwise batch and returns
``([B] losses, metrics)`` with losses = sum_name weight[name] * loss[name]. Each part keeps
its own hyper-parameters. Metrics are namespaced by the part's name ("dpo/rewards/margins",
plus "dpo/loss", the part's unweighted ``[B]`` loss), and the shared unprefixed
``rewards/*`` and ``logps/*`` are those of the first part (dict order), so dashboards that
read ``rewards/margins`` keep working.

A combination needs the reference model if any part does; reference-free parts ignore the
reference log-probs they are given. It is not registered: ``make_combined_spec`` returns a
``LossSpec`` the train step can use like a registered one.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping

import jax

from prefjax.losses.registry import LossSpec, get_spec

_SHARED_PREFIXES = ("rewards/", "logps/")
_BATCH_KEYS = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
               "ref_rejected_logps", "chosen_lengths", "rejected_lengths")


def _validate(weights, hparams):
  if not weights:
    raise ValueError("a combination needs at least one loss")
  specs = {}
  for name, weight in weights.items():
    spec = get_spec(name)  # Raises UnknownLossError listing the registered names.
    if spec.kind != "pairwise":
      raise ValueError(f"loss {name!r} is of kind {spec.kind!r}; only pairwise losses combine")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(
        weight):
      raise ValueError(f"weight of {name!r} must be a finite number, got {weight!r}")
    specs[name] = spec
  for name, params in hparams.items():
    if name not in specs:
      raise ValueError(f"hyper-parameters given for {name!r}, which is not in the "
                       f"combination {sorted(specs)}")
    accepted = set(inspect.signature(specs[name].fn).parameters) - set(_BATCH_KEYS)
    unknown = sorted(set(params) - accepted)
    if unknown:
      raise ValueError(f"loss {name!r} has no hyper-parameter(s) {unknown}")
  return specs


def combine(weights: Mapping[str, float],
            hparams: Mapping[str, Mapping[str, Any]] | None = None) -> Callable:
  """A pairwise loss that is the weighted sum of registered pairwise losses.

  loss = sum_n weights[n] * loss_n(batch; **hparams[n])

  Args:
    weights: loss name -> weight (dict order fixes the "first" part for shared metrics).
    hparams: loss name -> that loss's keyword hyper-parameters (optional per loss).

  Returns:
    A function of the pairwise batch keywords returning ``([B] losses, metrics)``.

  Example:
    >>> fn = combine({"dpo": 1.0, "hinge": 0.5}, {"dpo": {"beta": 0.2}})
    >>> z = jnp.zeros(2)
    >>> fn(policy_chosen_logps=z, policy_rejected_logps=z, ref_chosen_logps=z,
    ...    ref_rejected_logps=z)[0]   # log 2 + 0.5 * 1
  """
  hparams = dict(hparams or {})
  weights = dict(weights)
  specs = _validate(weights, hparams)
  first = next(iter(weights))

  def combined(*, policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None,
               ref_rejected_logps=None, chosen_lengths=None, rejected_lengths=None):
    batch = dict(policy_chosen_logps=policy_chosen_logps,
                 policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                 chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    total, metrics = 0.0, {}
    for name, weight in weights.items():
      losses, part_metrics = specs[name].fn(**batch, **hparams.get(name, {}))
      total = total + weight * losses
      metrics[f"{name}/loss"] = jax.lax.stop_gradient(losses)
      for key, value in part_metrics.items():
        metrics[f"{name}/{key}"] = value
        if name == first and key.startswith(_SHARED_PREFIXES):
          metrics[key] = value
    return total, metrics

  combined.__name__ = "combined_" + "_".join(weights)
  combined.__doc__ = f"Weighted sum of pairwise losses {weights} (hparams {hparams})."
  return combined


def make_combined_spec(weights: Mapping[str, float],
                       hparams: Mapping[str, Mapping[str, Any]] | None = None) -> LossSpec:
  """The ``LossSpec`` of ``combine(weights, hparams)``; needs_reference is the OR of parts.

  The name lists the parts and weights, e.g. ``"dpo*1.0+hinge*0.5"``.
  """
  fn = combine(weights, hparams)
  needs_reference = any(get_spec(name).needs_reference for name in weights)
  name = "+".join(f"{n}*{w}" for n, w in weights.items())
  return LossSpec(name=name, fn=fn, kind="pairwise", needs_reference=needs_reference)
