"""Prefix-shared, packed and chunked batches give the plain path's loss and gradients.

Each test runs the shared step (``make_train_step``, SGD with lr 1, so new - old params = -grad)
once on a plain batch and once on the same examples in another layout / with chunked
log-probs, with a reference model that differs from the policy.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prefjax import sharding
from prefjax.data import layout, pipeline
from prefjax.testbed import world
from prefjax.train.objective import make_objective
from prefjax.train.step import init_state, make_train_step
from tests.train import helpers

TOK = helpers.TOK
MAX_LEN = 32
CASES = {"pairwise": ("dpo", {"beta": 0.1}), "multi": ("mdpo", {"beta": 0.1}),
         "unpaired": ("kto", {"beta": 0.1}), "sft": ("sft", {}), "simpo": ("simpo", {})}


def _examples(kind, n=4):
  wcfg = world.WorldConfig(tasks=("sort",))
  if kind == "multi":
    groups = world.group_preferences(wcfg, n, k=4)
    # Ragged groups (4, 3, 2, ...) exercise the padded-slot copies.
    return [dict(g, chosen=list(g["chosen"])[:4 - i % 3], rejected=list(g["rejected"])[:2 + i % 3])
            for i, g in enumerate(groups)]
  if kind == "unpaired":
    return world.unpaired_examples(wcfg, n)[:n]
  if kind == "sft":
    return world.sft_examples(wcfg, n)
  return world.preference_pairs(wcfg, n)


def _plain_batch(kind, exs):
  enc = layout.make_encoder(kind, TOK, MAX_LEN, group_size=4)
  return enc(exs) if getattr(enc, "batch_level", False) else pipeline.stack([enc(e) for e in exs])


def _step(loss, hparams, batch, chunk=None):
  """(loss, grads) of one SGD(1) step from fixed params, with a different reference."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  model, graphdef, params = helpers.tiny_lm(0)
  _, _, ref_params = helpers.tiny_lm(1)
  param_sh = sharding.param_shardings(model, mesh)
  objective = make_objective(loss, hparams, logps_chunk=chunk)
  tx = optax.sgd(1.0)
  state, state_sh = init_state(jax.tree.map(jnp.copy, params), tx, param_sh)
  step = make_train_step(graphdef, objective, tx, lambda s: 1.0, state_shardings=state_sh,
                         batch_sharding=sharding.batch_sharding(mesh), ref_shardings=param_sh,
                         donate=False)
  new, m = step(state, batch, jax.device_put(ref_params, param_sh))
  grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params, new["params"])
  return float(m["loss"]), grads, m


def _assert_same(a, b):
  (la, ga, _), (lb, gb, _) = a, b
  np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_packed_chunked_pairs_equal_plain():
  """The fast check (two compiles): packed rows with chunked log-probs vs plain rows; the
  rows are cut to a bucket length (data.bucket, the training default)."""
  loss, hp = CASES["pairwise"]
  exs = _examples("pairwise")
  enc = layout.make_encoder("pairwise", TOK, MAX_LEN, layout="packed", batch_size=4, rows=2,
                            row_len=8 * MAX_LEN, bucket=True)
  packed = enc(exs)
  assert packed["rows_segment_ids"].max() >= 2
  assert packed["rows_input_ids"].shape[1] < 8 * MAX_LEN
  _assert_same(_step(loss, hp, _plain_batch("pairwise", exs)), _step(loss, hp, packed, chunk=16))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_prefix_packed_and_chunked_equal_plain(case):
  kind = "pairwise" if case == "simpo" else case
  loss, hp = CASES[case]
  exs = _examples(kind)
  plain = _step(loss, hp, _plain_batch(kind, exs))
  prefix_batch = layout.make_encoder(kind, TOK, MAX_LEN, layout="prefix", group_size=4,
                                     batch_size=4)(exs)
  _assert_same(plain, _step(loss, hp, prefix_batch))
  packed_enc = layout.make_encoder(kind, TOK, MAX_LEN, layout="packed", group_size=4,
                                   batch_size=4, rows=2,
                                   row_len=max(prefix_batch["rows_segment_ids"].sum(1)) * 2)
  packed = packed_enc(exs)
  assert packed["rows_segment_ids"].max() >= 2          # rows really hold several examples
  _assert_same(plain, _step(loss, hp, packed))
  _assert_same(plain, _step(loss, hp, _plain_batch(kind, exs), chunk=7))
  _assert_same(plain, _step(loss, hp, packed, chunk=16))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["pairwise", "multi", "unpaired"])
def test_empty_example_slots_do_not_count(case):
  """A packed batch with 3 examples in 4 slots equals the plain batch of those 3."""
  loss, hp = CASES[case]
  exs = _examples(case, 3)
  plain = _step(loss, hp, _plain_batch(case, exs))
  enc = layout.make_encoder(case, TOK, MAX_LEN, layout="packed", group_size=4, batch_size=4,
                            rows=2, row_len=4 * MAX_LEN)
  batch = enc(exs)
  np.testing.assert_array_equal(batch["example_mask"], [1, 1, 1, 0])
  got = _step(loss, hp, batch)
  _assert_same(plain, got)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(got[1]))
