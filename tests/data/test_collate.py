"""collate.pack_row length policies and pipeline.filter_examples counting."""
import itertools

import numpy as np
import pytest

from prefjax.data import collate, pipeline
from prefjax.data.collate import (
    CompletionTooLong, PolicyError, PromptTooLong, RowSkipped, pack, pack_row)
from prefjax.errors import DataError
from prefjax.testbed.tokenizer import TestbedTokenizer

TOK = TestbedTokenizer()


def _ids(n, start):
  return list(range(start, start + n))


def _read_back(row):
  """(input prefix before the completion, completion targets) of one row."""
  mask = row["loss_mask"].astype(bool)
  first = int(np.argmax(mask))
  return list(row["input_ids"][:first + 1]), list(row["target_ids"][mask])


def test_row_that_fits_is_unchanged_by_every_policy():
  p, c = [1] + _ids(4, 10), _ids(3, 30) + [2]
  for trunc, comp in itertools.product(collate.TRUNCATION_POLICIES, collate.COMPLETION_POLICIES):
    row, pc, cc = pack_row(p, c, 8, truncate=trunc, completion=comp)
    assert (pc, cc) == (False, False)
    assert _read_back(row) == (p, c)
    assert row["segment_ids"].sum() == len(p) + len(c) - 1 == 8


def test_prompt_left_keeps_bos_and_the_prompt_end_as_before():
  p, c = [1] + _ids(9, 10), _ids(4, 30) + [2]        # 10 + 5 - 1 = 14 > 8
  row, truncated = pack(p, c, 8)
  prompt, completion = _read_back(row)
  assert truncated and completion == c
  assert prompt == [1] + p[-3:]                      # budget 8 + 1 - 5 = 4 tokens: BOS + 3


def test_completion_truncate_keeps_the_start_without_the_end_of_turn():
  max_len = 16
  p, c = [1] + _ids(5, 10), _ids(30, 40) + [2]       # completion alone exceeds max_len
  row, pc, cc = pack_row(p, c, max_len, completion="truncate")
  prompt, completion = _read_back(row)
  assert (pc, cc) == (False, True)
  assert prompt == p                                  # a 6-token prompt is under max_len // 2
  assert completion == c[:max_len + 1 - len(p)]       # the first 11 tokens, no EOS
  assert 2 not in completion
  assert row["segment_ids"].sum() == max_len


def test_completion_truncate_leaves_the_prompt_half_the_row():
  max_len = 16
  p, c = [1] + _ids(20, 10), _ids(30, 40) + [2]
  row, pc, cc = pack_row(p, c, max_len, completion="truncate")
  prompt, completion = _read_back(row)
  assert pc and cc
  assert prompt == [1] + p[-(max_len // 2 - 1):]      # max_len // 2 tokens: BOS + the end
  assert completion == c[:max_len + 1 - max_len // 2]


@pytest.mark.parametrize("comp,err,reason", [("drop", CompletionTooLong, "completion_too_long"),
                                             ("error", PolicyError, None)])
def test_completion_longer_than_max_len_drop_or_error(comp, err, reason):
  with pytest.raises(err, match="completion of 20 tokens does not fit max_len=8") as e:
    pack_row([1, 5], _ids(20, 10), 8, completion=comp, where="ex 3")
  assert isinstance(e.value, DataError)
  assert getattr(e.value, "reason", None) == reason


def test_prompt_policies_drop_and_error():
  p, c = [1] + _ids(12, 10), [30, 2]
  with pytest.raises(PromptTooLong, match="leaves no room") as e:
    pack_row(p, c, 8, truncate="drop")
  assert e.value.reason == "prompt_too_long"
  with pytest.raises(PolicyError, match="truncate='prompt_left'"):
    pack_row(p, c, 8, truncate="error")
  with pytest.raises(ValueError, match="unknown completion policy"):
    pack_row(p, c, 8, completion="cut")


def test_random_rows_respect_every_policy():
  rng = np.random.default_rng(0)
  seen = {"refused": 0, "prompt_cut": 0, "completion_cut": 0}
  for _ in range(300):
    max_len = int(rng.integers(2, 24))
    p = [1] + list(rng.integers(3, 60, int(rng.integers(0, 30))))
    c = list(rng.integers(3, 60, int(rng.integers(0, 30)))) + [2]
    trunc = collate.TRUNCATION_POLICIES[int(rng.integers(3))]
    comp = collate.COMPLETION_POLICIES[int(rng.integers(3))]
    try:
      row, pc, cc = pack_row(p, c, max_len, truncate=trunc, completion=comp)
    except (RowSkipped, PolicyError):
      assert len(p) + len(c) - 1 > max_len          # only rows that do not fit are refused
      seen["refused"] += 1
      continue
    seen["prompt_cut"] += pc
    seen["completion_cut"] += cc
    prompt, completion = _read_back(row)
    assert len(prompt) + len(completion) - 1 <= max_len
    assert prompt[0] == 1 and prompt[1:] == (p[len(p) - len(prompt) + 1:] if len(prompt) > 1
                                             else [])
    assert completion == c[:len(completion)] and len(completion) >= 1
    assert pc == (len(prompt) < len(p)) and cc == (len(completion) < len(c))
    assert not cc or comp == "truncate"
    assert not pc or trunc == "prompt_left"
    if comp == "truncate" and cc:
      assert len(prompt) >= min(len(p), max_len // 2)
  assert min(seen.values()) > 10, seen               # every branch was exercised


def _legacy_pack(prompt_ids, completion_ids, max_len):
  """The pre-policy ``pack`` (prompt_left), transcribed: cut the prompt from the left after
  BOS to make room for the whole completion; a completion over max_len was an error."""
  if len(prompt_ids) + len(completion_ids) - 1 > max_len:
    room = max_len + 1 - len(completion_ids)
    if room < 1:
      raise ValueError("does not fit")
    prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - room + 1:] if room > 1 \
        else prompt_ids[:1]
  full = prompt_ids + completion_ids
  return full[:-1], full[1:], len(prompt_ids) - 1


def test_rows_the_old_pack_accepted_are_packed_exactly_as_before():
  rng = np.random.default_rng(1)
  checked = 0
  for _ in range(300):
    max_len = int(rng.integers(2, 24))
    p = [1] + list(rng.integers(3, 60, int(rng.integers(0, 30))))
    c = list(rng.integers(3, 60, int(rng.integers(0, 20)))) + [2]
    try:
      inp, tgt, first = _legacy_pack(p, c, max_len)
    except ValueError:
      continue
    for comp in collate.COMPLETION_POLICIES:
      row, _, cc = pack_row(p, c, max_len, completion=comp)
      n = len(inp)
      assert not cc
      assert list(row["input_ids"][:n]) == inp and list(row["target_ids"][:n]) == tgt
      assert list(np.nonzero(row["loss_mask"])[0]) == list(range(first, n))
    checked += 1
  assert checked > 100


# ------------------------------------------------------------------------------ encoders
def test_encoders_report_completion_truncated_and_batch_metric():
  long = "1,2," * 10                                  # 40 characters + EOS
  enc = pipeline.encode_pair(TOK, 24, completion="truncate")
  out = enc({"id": "a", "prompt": "sort:2,1", "chosen": "1,2", "rejected": long})
  assert out["completion_truncated"] == 1.0 and out["truncated"] == 0.0
  short = enc({"id": "b", "prompt": "sort:2,1", "chosen": "1,2", "rejected": "2,1"})
  assert short["completion_truncated"] == 0.0
  batch = collate.stack([out, short])
  m = pipeline.batch_metrics(batch)
  assert m["data/completion_truncated_fraction"] == 0.5
  assert m["data/truncated_fraction"] == 0.0
  sft = pipeline.encode_sft(TOK, 24)({"id": "s", "prompt": "sort:2,1", "response": long})
  assert sft["completion_truncated"] == 1.0
  grp = pipeline.encode_group(TOK, 24, 2)({"id": "g", "prompt": "sort:2,1",
                                           "chosen": ["1,2", long], "rejected": ["2,1"]})
  assert grp["completion_truncated"] == 1.0
  unp = pipeline.encode_unpaired(TOK, 24, completion="drop")(
      [{"id": "u", "prompt": "sort:2,1", "response": "1,2", "label": 1},
       {"id": "v", "prompt": "sort:2,1", "response": "1,2", "label": 0}])
  assert list(unp["completion_truncated"]) == [0.0, 0.0]


def test_unpaired_kl_rows_never_drop_a_batch():
  long = "1,2," * 10
  enc = pipeline.encode_unpaired(TOK, 24, completion="drop")
  with pytest.raises(CompletionTooLong):
    enc([{"id": "u", "prompt": "sort:2,1", "response": long, "label": 1}])
  # example v's own row fits; its KL row borrows u's long response and is cut, not dropped
  out = enc([{"id": "u", "prompt": "sort:2,1", "response": "1,2", "label": 1},
             {"id": "v", "prompt": "sort:2,1", "response": "2,1", "label": 0}])
  assert out["kl_loss_mask"].shape == (2, 24)


# ------------------------------------------------------------------------------ filtering
def test_filter_counts_every_reason_and_keeps_the_good_rows_in_order():
  long = "1,2," * 10
  exs = [{"id": "ok1", "prompt": "sort:2,1", "chosen": "1,2", "rejected": "2,1"},
         {"id": "empty", "prompt": "sort:2,1", "chosen": "", "rejected": "2,1"},
         {"id": "long", "prompt": "sort:2,1", "chosen": "1,2", "rejected": long},
         {"id": "char", "prompt": "SORT", "chosen": "1,2", "rejected": "2,1"},
         {"id": "noprompt", "chosen": "1,2", "rejected": "2,1"},
         {"id": "ok2", "prompt": "sort:1,2", "chosen": "1,2", "rejected": "2,1"}]
  kept, skipped, bad = pipeline.filter_examples(exs, pipeline.encode_pair(TOK, 24,
                                                                          completion="drop"))
  assert [e["id"] for e in kept] == ["ok1", "ok2"]
  assert skipped["empty_response"] == 1 and skipped["completion_too_long"] == 1
  assert sum(skipped.values()) == 4
  assert [i for i, _ in bad] == ["empty", "long", "char", "noprompt"]
  assert "not in the testbed alphabet" in bad[2][1]


def test_filter_counts_bad_labels_and_group_sizes():
  unp = [{"id": "a", "prompt": "sort:2,1", "response": "1,2", "label": 2},
         {"id": "b", "prompt": "sort:2,1", "response": "1,2", "label": True}]
  kept, skipped, _ = pipeline.filter_examples(unp, pipeline.encode_unpaired(TOK, 24))
  assert [e["id"] for e in kept] == ["b"] and skipped == {"bad_label": 1}
  grp = [{"id": "g", "prompt": "sort:2,1", "chosen": ["1,2"] * 3, "rejected": ["2,1"]}]
  with pytest.raises(DataError, match="1 group_too_large"):
    pipeline.filter_examples(grp, pipeline.encode_group(TOK, 24, 2), source="g.jsonl")


def test_filter_reraises_an_error_policy():
  exs = [{"id": "long", "prompt": "sort:2,1", "chosen": "1,2", "rejected": "1,2," * 10}]
  with pytest.raises(PolicyError, match="example long"):
    pipeline.filter_examples(exs, pipeline.encode_pair(TOK, 24, completion="error"))


def test_no_usable_row_names_max_len_when_every_prompt_is_too_long():
  exs = [{"id": str(i), "prompt": "sort:" + "1,2," * 8, "response": "1"} for i in range(3)]
  enc = pipeline.encode_sft(TOK, 16, truncate="drop")
  with pytest.raises(DataError, match=r"no usable row in train\.jsonl: 3 skipped "
                     r"\(3 prompt_too_long\); max_len=16 is smaller than every prompt"):
    pipeline.filter_examples(exs, enc, source="train.jsonl")
  # the legacy strict check still raises on the first bad row
  with pytest.raises(PromptTooLong, match="example 0"):
    pipeline.check_examples(exs, enc)
