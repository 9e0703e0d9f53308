"""The loss registry: every loss is a pure function looked up by name.

A pairwise loss takes the keyword arrays ``policy_chosen_logps, policy_rejected_logps,
ref_chosen_logps, ref_rejected_logps, chosen_lengths, rejected_lengths`` (each ``[B]``:
summed completion log-probs and completion token counts) plus its hyper-parameters as
keywords, and returns ``(per_example_losses [B], metrics: dict[str, array])``. Metrics of
shape ``[B]`` are averaged over the valid examples by the train step; scalars pass through.

``register`` records, besides the function, the *kind* of batch the loss consumes (which
tells the shared train step which forward pass to run) and whether it needs a reference
model (a reference-free loss makes the step skip the reference forward pass entirely).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from prefjax.errors import PrefjaxError

KINDS = ("sft", "pairwise", "unpaired", "multi", "reward", "token", "ppo")


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """A registered loss: the function and how the train step must feed it."""
  name: str
  fn: Callable
  kind: str
  needs_reference: bool


_REGISTRY: dict[str, LossSpec] = {}


class UnknownLossError(PrefjaxError, KeyError):
  """An unknown loss name; the message lists the registered ones."""

  def __str__(self):
    return str(self.args[0])


def register(name: str, *, kind: str = "pairwise", needs_reference: bool = True):
  """Decorator that registers ``fn`` under ``name``; a duplicate name raises."""
  if kind not in KINDS:
    raise ValueError(f"loss {name!r}: unknown kind {kind!r}; expected one of {KINDS}")

  def deco(fn):
    if name in _REGISTRY:
      raise ValueError(f"loss {name!r} is already registered (by {_REGISTRY[name].fn.__module__})")
    _REGISTRY[name] = LossSpec(name=name, fn=fn, kind=kind, needs_reference=needs_reference)
    return fn

  return deco


def get_spec(name: str) -> LossSpec:
  """The ``LossSpec`` for ``name``; an unknown name lists the registered ones."""
  try:
    return _REGISTRY[name]
  except KeyError:
    raise UnknownLossError(
        f"unknown loss {name!r}; registered losses: {', '.join(sorted(_REGISTRY))}") from None


def get(name: str) -> Callable:
  """The loss function registered under ``name``."""
  return get_spec(name).fn


def names() -> list[str]:
  return sorted(_REGISTRY)
