"""Length-bucketed batches: shapes, equality with max_len padding, determinism by step."""
import jax
import numpy as np
import pytest
from flax import nnx

from prefjax.data import collate, pipeline
from prefjax.models.logprobs import forward_logps
from prefjax.testbed import world
from prefjax.testbed.tokenizer import TestbedTokenizer

TOK = TestbedTokenizer()


def test_bucket_lengths():
  assert pipeline.bucket_lengths(32) == (32,)
  assert pipeline.bucket_lengths(256) == (64, 128, 192, 256)
  assert pipeline.bucket_lengths(1024) == (64, 128, 192, 256, 384, 512, 768, 1024)
  assert pipeline.bucket_lengths(300) == (64, 128, 192, 256, 300)
  assert pipeline.bucket_lengths(40, smallest=8) == (8, 16, 24, 32, 40)
  assert pipeline.bucket_lengths(512, per_octave=4) == (64, 128, 160, 192, 224, 256, 320, 384,
                                                        448, 512)
  assert pipeline.bucket_lengths(512, per_octave=1) == (64, 128, 256, 512)
  with pytest.raises(ValueError, match="per_octave"):
    pipeline.bucket_lengths(512, per_octave=0)


@pytest.mark.parametrize("per_octave", [1, 2, 3, 4, 8])
def test_bucket_lengths_waste_at_most_one_step(per_octave):
  """Any need up to max_len gets a length wasting less than 1 / (per_octave + 1) of it
  (above 2 * smallest), strictly increasing, ending at max_len."""
  for max_len in (100, 512, 1000, 2048):
    b = pipeline.bucket_lengths(max_len, per_octave=per_octave)
    assert list(b) == sorted(set(b)) and b[-1] == max_len
    for need in range(129, max_len + 1, 7):
      got = next(x for x in b if x >= need)
      assert (got - need) / got < 1 / (per_octave + 1) or got == max_len, (max_len, need, got)


def _examples(n, rng, long_every=4):
  """Pairs whose completion lengths vary a lot (a few long ones)."""
  out = []
  for i in range(n):
    k = 30 if i % long_every == long_every - 1 else int(rng.integers(1, 6))
    out.append({"id": f"p{i}", "prompt": f"sort:{i % 10},1",
                "chosen": "1," * k + "2", "rejected": "2,1"})
  return out


def _check_bucketed(b, full, buckets):
  """``b`` is ``full`` cut to the smallest bucket holding every row; only padding was cut."""
  t = next(iter(v.shape[-1] for k, v in b.items() if k.endswith("input_ids")))
  assert t in buckets
  for k, v in full.items():
    if k.endswith(collate.ROW_FIELDS):
      np.testing.assert_array_equal(b[k], v[..., :t])
      assert not v[..., t:].any()                     # the cut part was padding
    else:
      np.testing.assert_array_equal(b[k], v)
  used = pipeline.used_length(full)
  assert t == min(x for x in buckets if x >= used)


@pytest.mark.parametrize("kind", ["sft", "pairwise", "multi", "unpaired"])
def test_bucketed_batches_are_the_padded_ones_cut(kind):
  rng = np.random.default_rng(0)
  pairs = _examples(32, rng)
  max_len, buckets = 96, (16, 32, 48, 64, 96)
  if kind == "sft":
    exs, enc = [dict(id=e["id"], prompt=e["prompt"], response=e["chosen"]) for e in pairs], \
        pipeline.encode_sft(TOK, max_len)
  elif kind == "pairwise":
    exs, enc = pairs, pipeline.encode_pair(TOK, max_len)
  elif kind == "multi":
    exs = [dict(e, chosen=[e["chosen"], "1,2"], rejected=[e["rejected"]]) for e in pairs]
    enc = pipeline.encode_group(TOK, max_len, 2)
  else:
    exs, enc = world.unpaired_from_pairs(pairs), pipeline.encode_unpaired(TOK, max_len)
  on = pipeline.batched(exs, enc, 4, seed=3, num_steps=8, buckets=buckets)
  off = pipeline.batched(exs, enc, 4, seed=3, num_steps=8, bucket=False)
  shapes = set()
  for step in range(8):
    b, full = on[step], off[step]
    assert full["example_mask"].shape == (4,)
    _check_bucketed(b, full, buckets)
    shapes.add(b[[k for k in b if k.endswith("input_ids")][0]].shape[-1])
  assert len(shapes) >= 2, shapes                      # the data does produce several buckets
  if kind == "multi":
    assert on[0]["chosen_input_ids"].ndim == 3


def test_batches_are_a_pure_function_of_examples_seed_and_step():
  rng = np.random.default_rng(1)
  exs = _examples(40, rng)
  enc = pipeline.encode_pair(TOK, 96)
  a = pipeline.batched(exs, enc, 4, seed=7, num_steps=30, buckets=(16, 32, 64, 96))
  b = pipeline.batched(list(exs), pipeline.encode_pair(TOK, 96), 4, seed=7, num_steps=30,
                       buckets=(16, 32, 64, 96))
  for step in (29, 3, 17, 3, 0):                      # any order, repeated
    x, y = a[step], b[step]
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = pipeline.batched(exs, enc, 4, seed=8, num_steps=30, buckets=(16, 32, 64, 96))
  assert any(not np.array_equal(a[s]["chosen_input_ids"], c[s]["chosen_input_ids"])
             for s in range(5))


def test_testbed_batches_are_unchanged():
  """max_len 32 is one bucket: bucketed testbed batches equal the old max_len batches."""
  cfg = world.WorldConfig()
  pairs = world.preference_pairs(cfg, 64)
  enc = pipeline.encode_pair(TOK, 32)
  on = pipeline.batched(pairs, enc, 8, seed=0, num_steps=5)
  off = pipeline.batched(pairs, enc, 8, seed=0, num_steps=5, bucket=False)
  for s in range(5):
    assert on[s]["chosen_input_ids"].shape == (8, 32)
    for k in off[s]:
      np.testing.assert_array_equal(on[s][k], off[s][k])


def test_eval_batches_bucket_too():
  rng = np.random.default_rng(2)
  exs = _examples(6, rng, long_every=100)             # only short rows
  enc = pipeline.encode_pair(TOK, 96)
  got = list(pipeline.eval_batches(exs, enc, 4, buckets=(32, 96)))
  full = list(pipeline.eval_batches(exs, enc, 4, bucket=False))
  assert [b["chosen_input_ids"].shape for b in got] == [(4, 32), (4, 32)]
  for b, f in zip(got, full):
    _check_bucketed(b, f, (32, 96))


def test_padding_never_changes_completion_logps(tiny_model):
  """A tiny model's completion log-probs on bucketed rows equal those on max_len rows."""
  _, graphdef, params = tiny_model                    # vocab 13, max_len 32
  logps = jax.jit(lambda b: forward_logps(nnx.merge(graphdef, params), b)[:2])
  rng = np.random.default_rng(0)
  rows = []
  for i in range(6):
    p = [1] + list(rng.integers(3, 13, int(rng.integers(1, 5))))
    c = list(rng.integers(3, 13, int(rng.integers(1, 7 if i else 9)))) + [2]
    rows.append(collate.pack_row(p, c, 32)[0])
  full = collate.stack(rows)
  cut = pipeline.bucket_batch(full, (8, 16, 32))
  assert cut["input_ids"].shape == (6, 16)
  lp_full, n_full = logps(full)
  lp_cut, n_cut = logps(cut)
  np.testing.assert_array_equal(np.asarray(n_full), np.asarray(n_cut))
  np.testing.assert_allclose(np.asarray(lp_cut), np.asarray(lp_full), rtol=1e-5, atol=1e-5)
