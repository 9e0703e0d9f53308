"""The start model's sample pools (``Env.pool``): seeded per split, cached in a shared dir."""
from types import SimpleNamespace

import numpy as np
import pytest

from prefjax.studies.real.common import Env, Pool, Sizes


class _Env(Env):
  """An Env whose sampler records its calls and answers from the item id and seed."""

  def __init__(self, sizes):
    items = {s: [SimpleNamespace(id=f"{s}{i}", prompt=f"p{s}{i}") for i in range(3)]
             for s in ("train", "val", "test")}
    super().__init__(ctx=None, start={}, sizes=sizes, train_items=items["train"],
                     val_items=items["val"], test_items=items["test"], grid=None)
    self.calls = []

  def sample(self, params, items, k, *, seed, temperature=None, desc=None):
    self.calls.append(([x.id for x in items], seed))
    return Pool(list(items), [[f"{x.id}/{seed}/{j}" for j in range(k)] for x in items],
                np.ones((len(items), k)), np.full((len(items), k), 5.0))


@pytest.mark.parametrize("split,seed_offset", [("train", 1000), ("val", 2000)])
def test_pool_is_sampled_once_per_split_and_seed_then_read_from_the_cache(tmp_path, split,
                                                                          seed_offset):
  env = _Env(Sizes(k=2))
  first = env.pool(3, str(tmp_path), split=split)
  again = _Env(Sizes(k=2)).pool(3, str(tmp_path), split=split)
  assert env.calls == [([f"{split}{i}" for i in range(3)], seed_offset + 3)]
  assert again.responses == first.responses and [x.id for x in again.items] == \
      [f"{split}{i}" for i in range(3)]


def test_pools_of_other_splits_seeds_or_sizes_are_not_shared(tmp_path):
  env = _Env(Sizes(k=2))
  env.pool(0, str(tmp_path))
  env.pool(0, str(tmp_path), split="val")
  env.pool(1, str(tmp_path))
  assert len(env.calls) == 3
  other = _Env(Sizes(k=3))                 # other sizes: sampled again, not read
  assert len(other.pool(0, str(tmp_path)).responses[0]) == 3 and len(other.calls) == 1


def test_pool_without_a_cache_dir_samples_every_time():
  env = _Env(Sizes(k=2))
  env.pool(0)
  env.pool(0)
  assert len(env.calls) == 2
