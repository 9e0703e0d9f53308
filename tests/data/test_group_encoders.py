"""encode_group (multi-sample rows + masks) and encode_unpaired (KTO rows + mismatched KL rows)."""
import numpy as np
import pytest

from prefjax.data import pipeline
from prefjax.errors import DataError
from prefjax.testbed.tokenizer import TestbedTokenizer

TOK = TestbedTokenizer()
MAX_LEN = 24


def _split(row_input, row_target, row_mask):
  """(prompt text, completion text) of one packed row, read back from its arrays."""
  mask = np.asarray(row_mask).astype(bool)
  first = int(np.argmax(mask))             # index whose target is the first completion token
  prompt = TOK.decode(np.asarray(row_input)[1:first + 1])   # drop BOS; ends with ">"
  completion = TOK.decode(np.asarray(row_target)[mask])
  return prompt, completion


def _side(out, side, j):
  return _split(out[f"{side}_input_ids"][j], out[f"{side}_target_ids"][j],
                out[f"{side}_loss_mask"][j])


def test_encode_group_pads_short_groups_with_masked_copies():
  enc = pipeline.encode_group(TOK, MAX_LEN, group_size=3)
  ex = {"id": "g", "prompt": "sort:3,1", "chosen": ["1,3", "3,1"], "rejected": ["13"],
        "alpha": 0.7}
  out = enc(ex)
  for k in ("input_ids", "target_ids", "loss_mask", "positions", "segment_ids"):
    assert out[f"chosen_{k}"].shape == (3, MAX_LEN)
    assert out[f"rejected_{k}"].shape == (3, MAX_LEN)
  np.testing.assert_array_equal(out["chosen_mask"], [1, 1, 0])
  np.testing.assert_array_equal(out["rejected_mask"], [1, 0, 0])
  assert [_side(out, "chosen", j) for j in range(2)] == [("sort:3,1>", "1,3"), ("sort:3,1>", "3,1")]
  assert _side(out, "rejected", 0) == ("sort:3,1>", "13")
  # Padded slots are valid rows (copies of the first sample), never all-padding.
  for side in ("chosen", "rejected"):
    for j in range(3):
      np.testing.assert_array_equal(out[f"{side}_input_ids"][j] * (out[f"{side}_mask"][j] == 0),
                                    out[f"{side}_input_ids"][0] * (out[f"{side}_mask"][j] == 0))
      assert out[f"{side}_loss_mask"][j].sum() > 0
  assert out["alpha"] == np.float32(0.7)
  assert out["example_mask"] == 1.0 and out["truncated"] == 0.0


def test_encode_group_full_group_and_batching():
  enc = pipeline.encode_group(TOK, MAX_LEN, group_size=2)
  exs = [{"id": str(i), "prompt": f"pick:ab{i}", "chosen": ["a", "b"], "rejected": ["c", "c"]}
         for i in range(4)]
  ds = pipeline.batched(exs, enc, 2, seed=0, num_steps=2)
  b = ds[0]
  assert b["chosen_input_ids"].shape == (2, 2, MAX_LEN)
  assert b["chosen_mask"].shape == (2, 2) and b["chosen_mask"].min() == 1.0
  assert np.isnan(b["alpha"]).all()   # no alpha given -> NaN, not a made-up value


@pytest.mark.parametrize("bad,match", [
    ({"chosen": "a", "rejected": ["b"]}, "non-empty list"),
    ({"chosen": [], "rejected": ["b"]}, "non-empty list"),
    ({"chosen": ["a", "b", "c"], "rejected": ["b"]}, "exceed group_size=2"),
    ({"chosen": ["a", ""], "rejected": ["b"]}, "empty chosen response 1"),
])
def test_encode_group_rejects_bad_groups(bad, match):
  enc = pipeline.encode_group(TOK, MAX_LEN, group_size=2)
  with pytest.raises(DataError, match=match):
    enc(dict({"id": "x7", "prompt": "pick:ab"}, **bad))


def test_encode_unpaired_kl_rows_are_mismatched_within_the_batch():
  enc = pipeline.encode_unpaired(TOK, MAX_LEN)
  exs = [{"id": str(i), "prompt": f"add:{i}+1", "response": str(i + 1 + 10 * i),
          "label": i % 2} for i in range(5)]
  out = enc(exs)
  assert out["response_input_ids"].shape == (5, MAX_LEN)
  assert out["kl_input_ids"].shape == (5, MAX_LEN)
  np.testing.assert_array_equal(out["labels"], [0, 1, 0, 1, 0])
  for i, ex in enumerate(exs):
    own = _split(out["response_input_ids"][i], out["response_target_ids"][i],
                 out["response_loss_mask"][i])
    kl = _split(out["kl_input_ids"][i], out["kl_target_ids"][i], out["kl_loss_mask"][i])
    assert own == (ex["prompt"] + ">", ex["response"])
    # Same prompt, the response of example (i - 1) mod B: a mismatched (x, y') pair.
    assert kl == (ex["prompt"] + ">", exs[(i - 1) % 5]["response"])
    assert kl[1] != own[1]


def test_encode_unpaired_is_batch_level_in_the_pipeline():
  enc = pipeline.encode_unpaired(TOK, MAX_LEN)
  exs = [{"id": str(i), "prompt": "sort:2,1", "response": r, "label": 1}
         for i, r in enumerate(["1,2", "2,1", "12", "21"])]
  b = pipeline.batched(exs, enc, 4, seed=0, num_steps=1, shuffle=False)[0]
  resp = [_split(b["response_input_ids"][i], b["response_target_ids"][i],
                 b["response_loss_mask"][i])[1] for i in range(4)]
  kl = [_split(b["kl_input_ids"][i], b["kl_target_ids"][i], b["kl_loss_mask"][i])[1]
        for i in range(4)]
  assert kl == [resp[-1]] + resp[:-1]


@pytest.mark.parametrize("bad,match", [({"response": ""}, "empty 'response'"),
                                       ({"label": 2}, "'label' must be 0/1")])
def test_encode_unpaired_rejects_bad_examples(bad, match):
  enc = pipeline.encode_unpaired(TOK, MAX_LEN)
  ex = dict({"id": "u3", "prompt": "sort:2,1", "response": "1,2", "label": 1}, **bad)
  with pytest.raises(DataError, match="example u3: " + match):
    enc([ex, {"id": "ok", "prompt": "sort:2,1", "response": "1,2", "label": 0}])
