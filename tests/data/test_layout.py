"""Prefix-shared units, best-fit packing and batch planning (numpy only, no model)."""
import numpy as np
import pytest

from prefjax.data import layout, pipeline
from prefjax.data.collate import pack
from prefjax.errors import DataError
from prefjax.testbed import world
from prefjax.testbed.tokenizer import TestbedTokenizer

TOK = TestbedTokenizer()


def test_each_branch_reads_like_its_plain_row():
  prompt, responses = [1, 5, 6, 7], [[8, 9, 2], [10, 2], [11, 12, 13, 2]]
  u = layout.unit_arrays(prompt, responses, slots=[0, 1, 2], example=3, n_slot=3)
  branch = np.asarray(u["branch_ids"])
  assert len(branch) == len(prompt) - 1 + sum(map(len, responses))
  for j, resp in enumerate(responses):
    keep = (branch == 0) | (branch == j + 1)          # what branch j's tokens attend to
    row, _ = pack(prompt, resp, max_len=16)
    n = len(prompt) + len(resp) - 1
    for k in ("input_ids", "target_ids", "loss_mask", "positions"):
      np.testing.assert_array_equal(np.asarray(u[k])[keep], row[k][:n], err_msg=k)
    np.testing.assert_array_equal(np.asarray(u["slot_ids"])[branch == j + 1], 3 * 3 + j)
  assert (np.asarray(u["slot_ids"])[branch == 0] == -1).all()


@pytest.mark.parametrize("seed", range(5))
def test_best_fit_decreasing_respects_capacity(seed):
  rng = np.random.default_rng(seed)
  sizes = list(rng.integers(1, 50, 30))
  where = layout.best_fit_decreasing(sizes, 64)
  used = np.bincount(where, weights=sizes)
  assert (used <= 64).all()
  assert len(used) <= 2 * np.ceil(sum(sizes) / 64)     # never worse than 2x the lower bound
  lower = int(np.ceil(sum(sizes) / 64))
  assert layout.best_fit_decreasing(sizes, 64, n_bins=len(used)) == where
  assert layout.best_fit_decreasing(sizes, 64, n_bins=lower - 1) is None
  assert layout.best_fit_decreasing([65], 64) is None


def test_rows_batch_keeps_units_apart():
  units = [layout.unit_arrays([1, 4, 5], [[6, 2], [7, 8, 2]], [0, 1], i, 2) for i in range(3)]
  out = layout.rows_batch(units, n_rows=2, row_len=16)
  seg = out["rows_segment_ids"]
  for r in range(2):
    ids = seg[r][seg[r] > 0]
    assert (np.diff(ids) >= 0).all()                  # each unit is contiguous
  assert sorted(np.unique(out["rows_slot_ids"])) == [-1, 0, 1, 2, 3, 4, 5]
  with pytest.raises(DataError, match="do not fit"):
    layout.rows_batch(units, n_rows=1, row_len=16)


def test_truncation_cuts_the_shared_prompt_like_pack():
  prompt, long, short = list(range(1, 12)), [20, 21, 22, 2], [23, 2]
  cut, truncated = layout.cut_prompt(prompt, len(long), 10, "prompt_left", "ex")
  row, was = pack(prompt, long, 10)
  assert truncated and was
  np.testing.assert_array_equal(row["input_ids"][:len(cut) - 1], cut[:-1])
  with pytest.raises(DataError, match="exceeds max_len"):
    layout.cut_prompt(prompt, len(long), 10, "error", "ex")


def test_plan_covers_every_example_once_and_packs_tighter():
  pairs = world.preference_pairs(world.WorldConfig(tasks=("sort",)), 40)
  enc = layout.make_encoder("pairwise", TOK, 32, layout="packed", batch_size=8, rows=2,
                            row_len=64)
  groups = layout.plan(pairs, enc)
  assert sorted(i for g in groups for i in g) == list(range(40))
  batches = [enc([pairs[i] for i in g]) for g in groups]
  plain = pipeline.stack([pipeline.encode_pair(TOK, 32)(p) for p in pairs[:8]])
  packed_pad = np.mean([layout.padding_fraction(b) for b in batches[:-1]])
  assert packed_pad < layout.padding_fraction(plain)
  ds = layout.plan_batches(pairs, enc, seed=0, num_steps=12)
  assert len(ds) >= 12 and ds[3]["rows_input_ids"].shape == (2, 64)
  again = layout.plan_batches(pairs, enc, seed=0, num_steps=12)      # a pure function of seed
  for k in ds[3]:
    np.testing.assert_array_equal(ds[3][k], again[3][k])


def test_bad_layout_and_oversized_examples_fail_clearly():
  with pytest.raises(DataError, match="unknown layout"):
    layout.make_encoder("pairwise", TOK, 32, layout="zigzag")
  with pytest.raises(DataError, match="batch_size"):
    layout.make_encoder("pairwise", TOK, 32, layout="prefix")
  enc = layout.make_encoder("pairwise", TOK, 32, layout="packed", batch_size=2, rows=1,
                            row_len=8)
  pairs = world.preference_pairs(world.WorldConfig(tasks=("sort",)), 2)
  with pytest.raises(DataError, match="alone does not fit"):
    layout.plan(pairs, enc)


@pytest.mark.parametrize("bucket", [True, 4])
def test_bucketed_rows_are_the_shortest_length_that_fits(bucket):
  rng = np.random.default_rng(0)
  per_octave = 2 if bucket is True else bucket
  for trial in range(20):
    units = [layout.unit_arrays(list(range(1, int(rng.integers(2, 40)))),
                                [[5] * int(rng.integers(1, 30)), [6] * int(rng.integers(1, 30))],
                                [0, 1], i, 2) for i in range(int(rng.integers(1, 5)))]
    sizes = [len(u["input_ids"]) for u in units]
    full = layout.rows_batch(units, n_rows=2, row_len=256)
    cut = layout.rows_batch(units, n_rows=2, row_len=256, bucket=bucket)
    t = cut["rows_input_ids"].shape[1]
    fits = [b for b in pipeline.bucket_lengths(256, per_octave=per_octave)
            if layout.best_fit_decreasing(sizes, b, 2) is not None]
    assert t == fits[0] and full["rows_input_ids"].shape == (2, 256)
    for k in ("input_ids", "segment_ids", "slot_ids", "loss_mask"):
      # the same tokens per example slot, only less padding
      a, b = full[f"rows_{k}"], cut[f"rows_{k}"]
      assert (a != 0).sum() == (b != 0).sum() or k == "slot_ids"
    for slot in range(2 * len(units)):
      np.testing.assert_array_equal(np.sort(full["rows_target_ids"][full["rows_slot_ids"] == slot]),
                                    np.sort(cut["rows_target_ids"][cut["rows_slot_ids"] == slot]))
