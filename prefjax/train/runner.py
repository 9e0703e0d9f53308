"""Compatibility names for code written against the first, testbed-only runner.

The runner now lives in ``prefjax.train.run`` (a run = model source + data source +
stages); these wrappers keep older scripts and studies working.
"""
from __future__ import annotations

from prefjax.data import pipeline
from prefjax.errors import ConfigError
from prefjax.train import datasets
from prefjax.train.run import run  # noqa: F401
from prefjax.train.sources import build_model  # noqa: F401
from prefjax.train.stages import preference_objective


def world_config(c):
  return datasets.world_config(c, "testbed")


def stage_objective(c):
  """The preference stage's objective (``config.dpo``)."""
  return preference_objective(c.dpo)


def preference_data(c, wcfg, tok, kind: str, n: int, split: str = "train"):
  """(testbed examples, encoder) for a loss kind: pairwise, unpaired or multi."""
  max_len, trunc = c.data.max_len, c.data.truncate
  if kind == "pairwise":
    encode = pipeline.encode_pair(tok, max_len, trunc)
  elif kind == "unpaired":
    encode = pipeline.encode_unpaired(tok, max_len, trunc)
  elif kind == "multi":
    encode = pipeline.encode_group(tok, max_len, wcfg.group_size, trunc)
  else:
    raise ConfigError(f"config.dpo.loss: loss kind {kind!r} has no testbed data")
  return datasets.world_examples(wcfg, kind, n, split), encode
