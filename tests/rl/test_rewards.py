"""Reward placement on the action grid, the missing-end-token policy and bad sources."""
import numpy as np
import pytest

from prefjax.data.collate import pack, stack
from prefjax.errors import ConfigError, DataError
from prefjax.rl import rewards as rw
from prefjax.testbed.tokenizer import TestbedTokenizer

TOK = TestbedTokenizer()


def _view(with_eos=(True, False)):
  """Row 0 ends with the end token; row 1 was cut at max_new_tokens (no end token)."""
  rows = []
  for prompt, comp, eos in zip(("sort:3,1", "sort:2,1,0"), ("1,3", "0,1,2"), with_eos):
    ids = TOK.encode(comp) + ([TOK.eos_id] if eos else [])
    rows.append(pack(TOK.encode_prompt(prompt), ids, 24)[0])
  batch = stack(rows)
  return rw.RolloutView(batch=batch, prompts=["sort:3,1", "sort:2,1,0"],
                        completions=["1,3", "0,1,2"], eos_emitted=np.array(with_eos),
                        tasks=["sort", "sort"])


def test_sequence_reward_sits_on_the_last_completion_action():
  view = _view()
  b = view.batch
  # Row 0: the end token is the target at its last action.
  i0 = rw.last_action_index(b["loss_mask"])[0]
  assert b["target_ids"][0, i0] == TOK.eos_id
  # Prompt "<bos>sort:3,1>" has 10 tokens; completion "1,3" + EOS = 4 actions at 9..12.
  assert i0 == len(TOK.encode_prompt("sort:3,1")) - 1 + 3
  # Row 1 (no end token): the last sampled token "2", not one past it.
  i1 = rw.last_action_index(b["loss_mask"])[1]
  assert b["target_ids"][1, i1] == TOK.encode("2")[0]
  assert i1 == len(TOK.encode_prompt("sort:2,1,0")) - 1 + 5 - 1
  placed = rw.place_sequence(np.array([2.0, 3.0]), b["loss_mask"])
  assert placed[0, i0] == 2.0 and placed[1, i1] == 3.0 and placed.sum() == 5.0


def test_oracle_and_missing_eos_policies():
  view = _view()
  src = rw.make_source("oracle")
  r, valid, m = rw.compute_rewards([(src, 2.0)], view, missing_eos="penalty",
                                   missing_eos_penalty=-0.5)
  i = rw.last_action_index(view.batch["loss_mask"])
  # "1,3" for 3,1 is sorted (r* = 1); "0,1,2" for 2,1,0 is correct too (r* = 1).
  assert r[0, i[0]] == pytest.approx(2.0) and r[1, i[1]] == pytest.approx(2.0 - 0.5)
  assert r.sum() == pytest.approx(3.5) and valid.tolist() == [1.0, 1.0]
  assert m["reward/missing_eos_fraction"] == 0.5
  r, valid, _ = rw.compute_rewards([(src, 1.0)], view, missing_eos="mask")
  assert valid.tolist() == [1.0, 0.0] and r[1].sum() == 0.0 and r[0].sum() == 1.0
  with pytest.raises(ConfigError, match="unknown policy 'drop'"):
    rw.compute_rewards([(src, 1.0)], view, missing_eos="drop")


def test_token_and_span_sources_and_weighted_sum():
  view = _view()
  mask = view.batch["loss_mask"].astype(np.float32)
  dense = rw.RewardSource("dense", "token", lambda v: np.ones(mask.shape, np.float32))
  span = rw.make_source("rule", rule=lambda p, y: [(0, 1.0), (len(y) - 1, 2.0)], level="span",
                        name="spans")
  r, _, _ = rw.compute_rewards([(dense, 0.5), (span, 1.0)], view, missing_eos="none")
  first = rw.first_action_index(mask)
  want = 0.5 * mask
  for i, y in enumerate(view.completions):
    want[i, first[i]] += 1.0
    want[i, first[i] + len(y) - 1] += 2.0
  np.testing.assert_allclose(r, want)


@pytest.mark.parametrize("bad,match", [
    (lambda v: np.array([1.0, np.nan]), "reward source 'bad' returned a non-finite reward"),
    (lambda v: np.ones(3), r"reward source 'bad' returned shape \(3,\), expected \(2,\)"),
])
def test_bad_sources_raise_one_line(bad, match):
  with pytest.raises(DataError, match=match):
    rw.compute_rewards([(rw.RewardSource("bad", "sequence", bad), 1.0)], _view())


def test_span_outside_the_completion_is_an_error():
  src = rw.make_source("rule", rule=lambda p, y: [(99, 1.0)], level="span", name="far")
  with pytest.raises(DataError, match="reward source 'far': span end 99"):
    rw.compute_rewards([(src, 1.0)], _view())
  with pytest.raises(ConfigError, match="unknown reward source 'orcale'"):
    rw.make_source("orcale")
