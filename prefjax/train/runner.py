"""Compatibility names for code written against the first, testbed-only runner.

The runner now lives in ``prefjax.train.run`` (a run = model source + data source +
stages); these wrappers keep older scripts and studies working.
"""
from __future__ import annotations

from flax import nnx

from prefjax.models import Transformer, make_config
from prefjax.testbed.source import world_config as _world_config
from prefjax.train.run import run  # noqa: F401
from prefjax.train.stages import preference_objective


def world_config(c):
  return _world_config(c, "testbed")


def stage_objective(c):
  """The preference stage's objective (``config.dpo``)."""
  return preference_objective(c.dpo)


def preference_data(c, wcfg, tok, kind: str, n: int, split: str = "train"):
  """(testbed examples, encoder) for a loss kind: pairwise, unpaired or multi."""
  from prefjax.data import pipeline
  from prefjax.errors import ConfigError
  from prefjax.testbed import world
  max_len, trunc = c.data.max_len, c.data.truncate
  if kind == "pairwise":
    return world.preference_pairs(wcfg, n, split), pipeline.encode_pair(tok, max_len, trunc)
  if kind == "unpaired":
    return (world.unpaired_examples(wcfg, n, split),
            pipeline.encode_unpaired(tok, max_len, trunc))
  if kind == "multi":
    return (world.group_preferences(wcfg, n, split),
            pipeline.encode_group(tok, max_len, wcfg.group_size, trunc))
  raise ConfigError(f"config.dpo.loss: loss kind {kind!r} has no testbed data")


def build_model(c, tokenizer):
  """(model, graphdef, pure params) of a fresh ``config.model.preset`` model."""
  mcfg = make_config(c.model.preset, vocab_size=tokenizer.vocab_size,
                     overrides=c.model.overrides.to_dict())
  model = Transformer(mcfg, nnx.Rngs(c.seed))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)
