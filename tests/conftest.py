"""Shared fixtures: one tiny model used across the suite."""
import jax
import numpy as np
import pytest
from flax import nnx

from prefjax.models import Transformer, make_config

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_cfg():
  return make_config(None, vocab_size=13, overrides=dict(
      dim=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, mlp_dim=24, max_len=32))


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
  """(model, graphdef, params) with non-trivial norm weights."""
  model = Transformer(tiny_cfg, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype)
      if "scale" in jax.tree_util.keystr(p) else x, params)
  return nnx.merge(graphdef, params), graphdef, params
