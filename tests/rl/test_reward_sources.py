"""Reward placement on the action grid, the missing-end-token policy and bad sources."""
import numpy as np
import pytest

from prefjax.data.collate import pack, stack
from prefjax.errors import ConfigError, DataError
from prefjax.eval import testbed_eval  # noqa: F401  (registers the "oracle" reward source)
from prefjax.rl import reward_sources as rw
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


# ---------------------------------------------------------------------------------------------
# The registry: verifier, format, length penalty, calibration, errors.

class _Score:
  def __init__(self, correct, formatted, lenient):
    self.correct, self.formatted, self.lenient = correct, formatted, lenient


class _TaskSet:
  """Scores a response 1 when it is exactly the item's answer; formatted when it has a ','."""

  def scores(self, metas, responses):
    return [_Score(float(r == m), "," in r, float(m in r)) for m, r in zip(metas, responses)]


class _Item:
  def __init__(self, meta):
    self.meta, self.text, self.task = meta, "", None


class _Env(rw.SourceEnv):
  @property
  def taskset(self):
    return _TaskSet()


def test_verifier_format_and_length_penalty_sources():
  view = _view()
  view.items = [_Item("1,3"), _Item("2,1,0")]          # row 0 right, row 1 wrong
  env = _Env()
  np.testing.assert_array_equal(rw.make_source("verifier", env).fn(view), [1.0, 0.0])
  np.testing.assert_array_equal(rw.make_source("verifier", env, lenient=True).fn(view), [1, 0])
  np.testing.assert_array_equal(rw.make_source("format", env).fn(view), [1.0, 1.0])
  lengths = view.batch["loss_mask"].sum(-1)            # "1,3"+EOS = 4, "0,1,2" = 5
  np.testing.assert_array_equal(lengths, [4, 5])
  np.testing.assert_allclose(rw.make_source("length_penalty", env, scale=2.0).fn(view),
                             -lengths / 2.0)
  total, _, m = rw.compute_rewards(
      rw.build_sources(env, {"verifier": 1.0, "length_penalty": 0.5}), view, missing_eos="none")
  np.testing.assert_allclose(total.sum(-1), [1.0 - 0.5 * 4 / 100, -0.5 * 5 / 100], rtol=1e-6)
  assert set(m) >= {"reward/verifier", "reward/length_penalty", "reward/total"}


def test_verifier_without_verifiable_prompts_is_one_line():
  with pytest.raises(ConfigError, match="needs a tasks: data source"):
    rw.make_source("verifier", rw.SourceEnv())
  view = _view()                                       # no items: testbed-style rows
  with pytest.raises(ConfigError, match="needs verifiable prompts"):
    rw.make_source("verifier", _Env()).fn(view)


def test_registry_errors_are_one_line():
  with pytest.raises(ValueError, match="already registered"):
    rw.register_reward_source("verifier")(lambda env, arg=None: None)
  with pytest.raises(ConfigError, match=r"did you mean verifier"):
    rw.get_spec("verifer")
  with pytest.raises(ConfigError, match="takes no argument"):
    rw.get_spec("verifier:x")
  with pytest.raises(ConfigError, match="needs an argument"):
    rw.get_spec("calibrated")
  with pytest.raises(ConfigError, match="must name at least one reward source"):
    rw.check_sources({})
  with pytest.raises(ConfigError, match=r"calibrated:length_penalty.*unknown argument 'bogus'"):
    rw.check_sources({"calibrated:length_penalty": 1.0},
                     {"calibrated:length_penalty": {"bogus": 1}})


@pytest.mark.parametrize("method", ["rc_mean", "rc_lwr"])
def test_calibrated_source_removes_a_pure_length_bias(method):
  """A reward that is only length (r = l / 10) calibrated on a reference sample of lengths
  4..20: what is left is ~0 at every length inside the sample's range."""
  def sample_of(lengths):
    rows = [pack(TOK.encode_prompt("sort:1"), TOK.encode("1" * (n - 1)) + [TOK.eos_id], 32)[0]
            for n in lengths]
    return rw.RolloutView(batch=stack(rows), prompts=[""] * len(lengths),
                          completions=[""] * len(lengths), eos_emitted=np.ones(len(lengths), bool))

  ref = sample_of(list(range(4, 21)) * 4)
  env = rw.SourceEnv(reference_sample=lambda n: ref)
  src = rw.make_source("calibrated:rule", env, method=method, ratio=8.0,
                       inner_kwargs={"rule": lambda p, y: 0.0})
  assert np.allclose(src.fn(ref), 0.0)                 # an unbiased source stays as it is
  biased = rw.RewardSource("lengthy", "sequence", lambda v: v.lengths / 10.0)
  rw.REWARD_SOURCES["_lengthy_test"] = rw.SourceSpec("_lengthy_test", lambda env, arg: biased)
  try:
    cal = rw.make_source("calibrated:_lengthy_test", env, method=method, ratio=8.0)
    view = sample_of([6, 10, 15])
    raw = biased.fn(view)
    out = cal.fn(view)
    assert np.all(np.abs(out) < 0.15 * np.abs(raw)), (raw, out)
    assert env.summary["calibrated:_lengthy_test/reference_length_spearman"] > 0.99
  finally:
    del rw.REWARD_SOURCES["_lengthy_test"]


def test_calibrated_rc_lwr_fits_a_tied_length_by_its_mean_not_one_sample():
  """Most of the reference sample has one length (short answers): the bias there is the
  tied group's (robust) mean reward, not the reward of whichever tied sample sorts first."""
  lengths = [5] * 48 + list(range(6, 22))
  rows = [pack(TOK.encode_prompt("sort:1"), TOK.encode("1" * (n - 1)) + [TOK.eos_id], 32)[0]
          for n in lengths]
  ref = rw.RolloutView(batch=stack(rows), prompts=[""] * 64, completions=[""] * 64,
                       eos_emitted=np.ones(64, bool))
  noise = np.random.default_rng(0).normal(size=64)
  inner = rw.RewardSource("noisy", "sequence",
                          lambda v: v.lengths / 10.0 + (noise if len(v.lengths) == 64 else 0))
  rw.REWARD_SOURCES["_noisy_test"] = rw.SourceSpec("_noisy_test", lambda env, arg: inner)
  try:
    env = rw.SourceEnv(reference_sample=lambda n: ref)
    cal = rw.make_source("calibrated:_noisy_test", env, method="rc_lwr")
    assert env.summary["calibrated:_noisy_test/lowess_frac"] == pytest.approx(49.5 / 64)
    one = rw.RolloutView(batch=stack(rows[:1]), prompts=[""], completions=[""],
                         eos_emitted=np.ones(1, bool))
    bias = 0.5 - float(cal.fn(one)[0])           # the view's raw reward is 5 / 10
    tied = 0.5 + noise[:48]
    # (at frac 0.3 the bias here is one tied sample's reward: 0.056 from the group's mean)
    assert abs(bias - tied.mean()) < 0.02
  finally:
    del rw.REWARD_SOURCES["_noisy_test"]
