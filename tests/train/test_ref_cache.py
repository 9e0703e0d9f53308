"""Cached reference log-probs (prefjax/train/ref_cache.py).

* Through the shared step (SGD with lr 1, so new - old params = -grad): a batch carrying the
  cached ``ref_*`` fields with no reference params gives the loss and gradients of the step
  that runs the reference, for pairwise, multi (K = 4) and unpaired (KTO: kl rows built from
  other examples of the batch) batches, plain and packed, and with gradient accumulation.
* The cache on disk: a second call hits without running the reference; a corrupt entry is
  detected (one warning line naming the file), recomputed and overwritten; a changed key
  ingredient misses.
* End to end through ``prefjax.train.run`` with a tiny real-format model.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prefjax import sharding
from prefjax.data import layout
from prefjax.train import ref_cache
from prefjax.train.objective import Objective, make_objective
from prefjax.train.step import init_state, make_train_step
from tests.train import helpers
from tests.train.test_layouts_step import MAX_LEN, TOK, _examples, _plain_batch

CASES = {"pairwise": ("dpo", {"beta": 0.1}), "multi": ("mdpo", {"beta": 0.1}),
         "unpaired": ("kto", {"beta": 0.1})}


def _packed(kind, exs):
  """Two rows, each holding several examples' prefix-shared units."""
  prefix = layout.make_encoder(kind, TOK, MAX_LEN, layout="prefix", group_size=4,
                               batch_size=4)(exs)
  enc = layout.make_encoder(kind, TOK, MAX_LEN, layout="packed", group_size=4, batch_size=4,
                            rows=2, row_len=int(max(prefix["rows_segment_ids"].sum(1))) * 2)
  batch = enc(exs)
  assert batch["rows_segment_ids"].max() >= 2
  return batch


def _step(loss, hp, batch, *, cached, accum=1):
  """(loss, grads): one SGD(1) step; the reference differs from the policy. ``cached``: the
  batch carries the reference's outputs and the step gets no reference params."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  model, graphdef, params = helpers.tiny_lm(0)
  _, _, ref_params = helpers.tiny_lm(1)
  param_sh = sharding.param_shardings(model, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  objective = make_objective(loss, hp)
  ref = jax.device_put(ref_params, param_sh)
  if cached:
    arrays = ref_cache.compute(graphdef, objective, ref, [batch], 1, batch_sh)
    assert arrays and all(k.startswith("ref_") for k in arrays)
    batch = ref_cache.WithReference([batch], arrays)[0]
    ref, param_sh = None, None
  tx = optax.sgd(1.0)
  state, state_sh = init_state(jax.tree.map(jnp.copy, params), tx,
                               sharding.param_shardings(model, mesh))
  step = make_train_step(graphdef, objective, tx, lambda s: 1.0, state_shardings=state_sh,
                         batch_sharding=batch_sh, ref_shardings=param_sh, donate=False,
                         accum_steps=accum)
  new, m = step(state, batch, ref)
  grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params, new["params"])
  return float(m["loss"]), grads


def _assert_same(a, b):
  (la, ga), (lb, gb) = a, b
  assert np.isfinite(la) and la != 0.0
  np.testing.assert_allclose(lb, la, rtol=1e-5, atol=1e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)


_slow = pytest.mark.slow


@pytest.mark.parametrize("kind,lay", [
    ("pairwise", "packed"), pytest.param("pairwise", "plain", marks=_slow),
    pytest.param("multi", "plain", marks=_slow), pytest.param("multi", "packed", marks=_slow),
    pytest.param("unpaired", "plain", marks=_slow),
    pytest.param("unpaired", "packed", marks=_slow)])
def test_cached_reference_equals_reference_in_the_step(kind, lay):
  loss, hp = CASES[kind]
  exs = _examples(kind)
  batch = _plain_batch(kind, exs) if lay == "plain" else _packed(kind, exs)
  _assert_same(_step(loss, hp, batch, cached=False), _step(loss, hp, batch, cached=True))


@pytest.mark.slow
def test_cached_fields_split_with_micro_batches():
  """accum_steps=2: the ``ref_*`` fields travel with their rows into the micro-batches."""
  loss, hp = CASES["unpaired"]
  batch = _plain_batch("unpaired", _examples("unpaired"))
  _assert_same(_step(loss, hp, batch, cached=False),
               _step(loss, hp, batch, cached=True, accum=2))


# ----------------------------------------------------------------------------- on disk
@pytest.fixture
def tiny(monkeypatch):
  """(prepare(directory, **changes) -> Result, reference call counter)."""
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  _, graphdef, params = helpers.tiny_lm(1)
  objective = make_objective("dpo", {"beta": 0.1})
  exs = _examples("pairwise", 8)
  batches = [_plain_batch("pairwise", exs[:4]), _plain_batch("pairwise", exs[4:])]
  calls = []
  real = Objective.reference
  monkeypatch.setattr(Objective, "reference",
                      lambda self, m, b: calls.append(1) or real(self, m, b))

  def prepare(directory, params=params, max_len=MAX_LEN):
    return ref_cache.prepare(graphdef, objective, params, batches, 2,
                             batch_sharding=sharding.batch_sharding(mesh),
                             directory=directory, extra={"max_len": max_len})
  return prepare, calls


def test_second_prepare_hits_without_running_the_reference(tiny, tmp_path):
  prepare, calls = tiny
  first = prepare(tmp_path)
  assert first.status == "miss" and calls
  calls.clear()
  second = prepare(tmp_path)
  assert second.status == "hit" and second.key == first.key and not calls
  for step in range(2):
    a, b = first.batches[step], second.batches[step]
    assert set(a) == set(b) and {"ref_chosen_logps", "ref_rejected_logps"} <= set(a)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_checksum", "garbage"])
def test_corrupt_entry_warns_and_is_recomputed(tiny, tmp_path, capsys, damage):
  prepare, _ = tiny
  first = prepare(tmp_path)
  npz = first.path
  data = open(npz, "rb").read()
  if damage == "truncate":
    open(npz, "wb").write(data[:len(data) // 2])
  elif damage == "flip":
    i = len(data) // 2
    open(npz, "wb").write(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
  elif damage == "no_checksum":
    os.remove(npz[:-len(".npz")] + ".sha256")
  else:    # consistent checksum, wrong contents (e.g. a hand-made file)
    ref_cache.save(tmp_path, first.key, {"ref_chosen_logps": np.zeros((3, 4), np.float32)})
  capsys.readouterr()
  again = prepare(tmp_path)
  err = capsys.readouterr().err.strip().splitlines()
  assert again.status == "recomputed"
  assert len(err) == 1 and "warning: reference cache" in err[0] and npz in err[0]
  for k, v in first.batches.arrays.items():
    np.testing.assert_array_equal(again.batches.arrays[k], v)
  assert prepare(tmp_path).status == "hit"           # the entry was overwritten


def test_changed_key_ingredient_misses(tiny, tmp_path):
  prepare, _ = tiny
  base = prepare(tmp_path)
  other = prepare(tmp_path, max_len=MAX_LEN + 1)
  _, _, params0 = helpers.tiny_lm(0)
  weights = prepare(tmp_path, params=params0)
  assert other.status == weights.status == "miss"
  assert len({base.key, other.key, weights.key}) == 3


# ----------------------------------------------------------------------------- end to end
torch = pytest.importorskip("torch", reason="needs pip install -e '.[parity]'")
pytest.importorskip("transformers", reason="needs pip install -e '.[parity]'")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_fixtures as fx  # noqa: E402
from tests.train.test_run import _config, _metrics  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("refcache_real")
  return {"model": fx.tiny_hf_model(str(d / "model")), "pairs": fx.write_pairs(d / "p.jsonl"),
          "unpaired": fx.write_unpaired(d / "u.jsonl")}


def _run(files, workdir, cache_dir, *, loss, train, enabled=True, **data):
  from prefjax.train.run import run
  c = _config(files, stages=("dpo",), loss=loss, train=train, **data)
  c.heldout.enabled = False
  c.export.enabled = False
  c.dpo.steps = 3
  c.reference_cache.enabled, c.reference_cache.dir = enabled, str(cache_dir)
  s = run(c, str(workdir))
  return s, [r["loss"] for r in _metrics(workdir, "dpo")]


@pytest.mark.slow
@pytest.mark.parametrize("loss,train,lay", [("dpo", "pairs", "packed"),
                                            ("kto", "unpaired", "plain")])
def test_run_twice_hits_and_matches_the_uncached_run(files, tmp_path, monkeypatch, loss,
                                                     train, lay):
  spec = {"pairs": "jsonl:", "unpaired": "unpaired:"}[train] + files[train]
  calls = []
  real = Objective.reference
  monkeypatch.setattr(Objective, "reference",
                      lambda self, m, b: calls.append(1) or real(self, m, b))
  cache = tmp_path / "cache"
  s0, plain = _run(files, tmp_path / "off", cache, loss=loss, train=spec, enabled=False,
                   layout=lay)
  assert "reference_cache/dpo" not in s0 and not cache.exists()
  s1, first = _run(files, tmp_path / "a", cache, loss=loss, train=spec, layout=lay)
  assert s1["reference_cache/dpo"] == "miss"
  assert s1["reference_cache/dpo/seconds"] > 0       # the precompute is timed
  calls.clear()
  s2, second = _run(files, tmp_path / "b", cache, loss=loss, train=spec, layout=lay)
  assert s2["reference_cache/dpo"] == "hit" and not calls      # the reference never ran
  assert s2["reference_cache/dpo/key"] == s1["reference_cache/dpo/key"]
  assert len(first) == 3 and first == second                   # bitwise: the same arrays
  np.testing.assert_allclose(first, plain, rtol=1e-5)
  summary = json.load(open(tmp_path / "b" / "summary.json"))
  assert summary["reference_cache/dpo"] == "hit"
  _, other = _run(files, tmp_path / "c", cache, loss=loss, train=spec, layout=lay,
                  max_len=40)
  assert json.load(open(tmp_path / "c" / "summary.json"))["reference_cache/dpo"] == "miss"


def _release_run(files, workdir, cache, **kw):
  from prefjax.train.run import run
  c = _config(files, stages=("sft", "dpo", "eval"), train="jsonl:" + files["pairs"])
  c.export.enabled = False
  c.dpo.steps = 3
  c.reference_cache.enabled, c.reference_cache.dir = True, str(cache)
  for k, v in kw.items():
    node, *path = k.split(".")
    target = c[node]
    for p in path[:-1]:
      target = target[p]
    target[path[-1]] = v
  s = run(c, str(workdir))
  return s, [r["loss"] for r in _metrics(workdir, "dpo")]


@pytest.mark.slow
def test_release_trains_the_same_and_drops_the_reference(files, tmp_path):
  """release=True: the policy starts from the reference's own buffers (no copy); the losses
  and the held-out evaluation (reference scores taken before training) are unchanged."""
  keep, a = _release_run(files, tmp_path / "keep", tmp_path / "cache")
  free, b = _release_run(files, tmp_path / "free", tmp_path / "cache",
                         **{"reference_cache.release": True})
  assert free["reference_cache/dpo/released"] is True
  assert "reference_cache/dpo/released" not in keep
  assert len(a) == 3 and a == b
  evals = [k for k in keep if k.startswith("eval/heldout/")]
  assert "eval/heldout/margin" in evals
  for k in evals:
    assert free[k] == pytest.approx(keep[k], rel=1e-6), k


@pytest.mark.slow
@pytest.mark.parametrize("kw,needle", [
    ({"reference_cache.release": True, "reference_cache.enabled": False},
     "needs config.reference_cache.enabled"),
    ({"reference_cache.release": True, "heldout.enabled": False},
     "scores every held-out pair against the reference"),
])
def test_release_refuses_what_needs_the_reference_before_training(files, tmp_path, kw, needle):
  from prefjax.errors import ConfigError
  with pytest.raises(ConfigError, match=needle):
    _release_run(files, tmp_path / "w", tmp_path / "cache", **kw)
  assert not _metrics(tmp_path / "w", "dpo")          # refused before the first dpo step
