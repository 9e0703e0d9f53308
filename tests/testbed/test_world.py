"""The preference world: label frequencies match alpha, minimal edits, determinism."""
import math

import numpy as np
import pytest

from prefjax.testbed import world
from prefjax.testbed.tasks import AddTask, PickTask, SortTask, get_task, minimal_edit
from prefjax.testbed.tokenizer import TestbedTokenizer


@pytest.mark.parametrize("noise", [0.0, 0.25])
def test_label_frequencies_match_stored_alpha(noise):
  """Over many pairs, how often the higher-reward response wins is sum(alpha) +- noise."""
  cfg = world.WorldConfig(tasks=("sort", "add"), label_noise=noise, bt_temperature=0.2, seed=3)
  pairs = [p for p in world.preference_pairs(cfg, 3000) if p["reward_chosen"] != p["reward_rejected"]]
  higher_won = np.array([p["reward_chosen"] > p["reward_rejected"] for p in pairs])
  # P(higher-reward response is chosen) for each pair, from the stored alpha.
  q = np.array([p["alpha"] if h else 1 - p["alpha"] for p, h in zip(pairs, higher_won)])
  expected, sd = q.sum(), math.sqrt((q * (1 - q)).sum())
  assert abs(higher_won.sum() - expected) < 4 * sd, (higher_won.sum(), expected, sd)
  # And per alpha bin (calibration): frequency within 4 standard errors.
  for lo, hi in [(0.5, 0.8), (0.8, 0.95), (0.95, 1.0)]:
    sel = (q >= lo) & (q < hi)
    if sel.sum() > 50:
      se = math.sqrt((q[sel] * (1 - q[sel])).sum()) / sel.sum() + 1e-9
      assert abs(higher_won[sel].mean() - q[sel].mean()) < 4 * se + 0.01


def test_alpha_formula():
  assert world.bt_alpha(1.0, 1.0, 0.1, 0.0) == 0.5
  p = 1 / (1 + math.exp(-0.5 / 0.1))
  assert world.bt_alpha(1.0, 0.5, 0.1, 0.2) == pytest.approx(0.8 * p + 0.2 * (1 - p))


def test_world_is_deterministic_given_a_seed():
  cfg = world.WorldConfig(tasks=("sort", "add", "pick"))
  assert world.preference_pairs(cfg, 50) == world.preference_pairs(cfg, 50)
  other = world.preference_pairs(world.WorldConfig(tasks=("sort", "add", "pick"), seed=1), 50)
  assert other != world.preference_pairs(cfg, 50)


def test_sft_error_rate_is_controllable():
  for rate in (0.0, 0.4):
    ex = world.sft_examples(world.WorldConfig(sft_error_rate=rate), 2000)
    wrong = np.mean([e["reward"] < 1.0 for e in ex])
    assert abs(wrong - rate) < 0.04


def test_eval_prompts_are_held_out():
  cfg = world.WorldConfig(tasks=("add",))
  train = {e["prompt"] for e in world.sft_examples(cfg, 1000)}
  train |= {e["prompt"] for e in world.preference_pairs(cfg, 1000)}
  assert not train & {p for _, p in world.eval_prompts(cfg, 300)}


def _apply(flawed, ops):
  out, i = [], 0
  for op, pos, ch in ops:
    out.extend(flawed[i:pos])
    i = pos
    if op == "sub":
      out.append(ch)
      i += 1
    elif op == "del":
      i += 1
    else:
      out.append(ch)
  return "".join(out + list(flawed[i:]))


@pytest.mark.parametrize("flawed,correct,n_ops", [
    ("1,3,2", "1,2,3", 2), ("1,2,4", "1,2,3", 1), ("132", "13", 1), ("12", "132", 1), ("", "ab", 2)])
def test_minimal_edit(flawed, correct, n_ops):
  ops, mask = minimal_edit(flawed, correct)
  assert len(ops) == n_ops
  assert _apply(flawed, ops) == correct
  assert len(mask) == len(flawed)


def test_pairs_store_minimal_edits_of_flawed_responses():
  for p in world.preference_pairs(world.WorldConfig(tasks=("sort", "add")), 200):
    for side in ("chosen", "rejected"):
      task = get_task(p["task"])
      assert task.reward(p["prompt"], p[f"{side}_edit"]) == 1.0
      flawed = p[f"{side}_flawed_mask"]
      assert len(flawed) == len(p[side])
      assert (sum(flawed) == 0) == (p[f"reward_{side}"] == 1.0)


def test_oracle_rewards():
  assert SortTask().reward("sort:3,1,2", "1,2,3") == 1.0
  assert SortTask().reward("sort:3,1,2", "1,3,2") == pytest.approx(0.5 + 0.5 / 3)
  assert SortTask().reward("sort:3,1,2", "x") == 0.0
  assert AddTask().reward("add:47+85", "132") == 1.0
  assert AddTask().reward("add:47+85", "142") == pytest.approx(2 / 3)
  pick = PickTask()
  assert pick.reward("pick:abc", "b") == 1.0 and pick.reward("pick:abc", "z") == 0.0
  assert pick.population_score("pick:ab", ["a", "b"]) == 0.0
  assert pick.population_score("pick:ab", ["a", "a"]) == pytest.approx(-0.5)


def test_tokenizer_round_trip_and_errors():
  tok = TestbedTokenizer()
  ids = tok.encode_prompt("sort:3,1")
  assert ids[0] == tok.bos_id and tok.decode(ids) == "sort:3,1>"
  assert tok.encode_completion("1,3")[-1] == tok.eos_id
  with pytest.raises(ValueError, match="not in the testbed alphabet"):
    tok.encode("Sort!")
