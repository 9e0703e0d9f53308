"""The judge of a real policy: same seeds for both sides, exact scores, win rate, KL, rows."""
import jax
import numpy as np
from flax import nnx

from prefjax.data.prompts import PromptItem
from prefjax.eval import judge
from prefjax.models import Transformer, make_config
from prefjax.rl import reward_sources as rw
from prefjax.testbed.tokenizer import TestbedTokenizer

TOK = TestbedTokenizer()
CFG = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
    dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32))


class _Score:
  def __init__(self, correct, formatted):
    self.correct, self.formatted, self.lenient = correct, formatted, correct


class _Meta:
  answer = "1"


class _TaskSet:
  """Correct when the response contains a '1'; formatted when it contains a ','."""

  def scores(self, metas, responses):
    return [_Score(float("1" in r), "," in r) for r in responses]


def _model(seed, scale):
  model = Transformer(CFG, nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  params["embed"] = params["embed"] * scale
  return graphdef, params


def _items(n=6):
  return [PromptItem(id=f"p{i}", prompt=f"sort:{i},1", task="sort", meta=_Meta())
          for i in range(n)]


def _verifier():
  class Env(rw.SourceEnv):
    taskset = _TaskSet()
  return rw.make_source("verifier", Env())


def test_a_policy_judged_against_itself_ties_with_zero_kl():
  m = _model(0, 0.05)
  s = judge.JudgeSettings(n_samples=2, max_new_tokens=8, max_len=32, batch_size=4,
                          logps_chunk=None)
  metrics, rows = judge.judge(m, m, TOK, _items(), source=_verifier(), taskset=_TaskSet(),
                              settings=s)
  assert metrics["judge/samples"] == 12 and len(rows) == 24
  pol = [r for r in rows if r["model"] == "policy"]
  ref = [r for r in rows if r["model"] == "reference"]
  assert [r["response"] for r in pol] == [r["response"] for r in ref]   # same seeds
  assert metrics["win_rate_vs_reference"] == 0.5
  assert abs(metrics["kl_to_reference"]) < 1e-5
  acc = np.mean([r["correct"] for r in pol])
  assert metrics["verified_accuracy/policy"] == metrics["verified_accuracy/reference"] == acc
  assert set(pol[0]) >= {"model", "prompt", "response", "score", "correct", "formatted"}
  assert judge.headline(metrics).startswith("policy/reference verified accuracy: ")


def test_win_rate_counts_ties_half_and_kl_is_positive_for_a_different_policy():
  pol, ref = _model(0, 0.05), _model(1, 0.05)
  s = judge.JudgeSettings(n_samples=4, max_new_tokens=8, max_len=32, batch_size=8,
                          temperature=1.0, logps_chunk=None)
  metrics, rows = judge.judge(pol, ref, TOK, _items(4), source=_verifier(), taskset=_TaskSet(),
                              settings=s)
  p = np.array([r["score"] for r in rows if r["model"] == "policy"])
  r = np.array([r["score"] for r in rows if r["model"] == "reference"])
  assert metrics["win_rate_vs_reference"] == np.mean((p > r) + 0.5 * (p == r))
  assert metrics["kl_to_reference"] > 0


def test_kl_uses_the_sampler_log_probs_and_equals_two_full_forwards():
  """The policy's side of the KL is the sampler's log-probs; it matches the KL from full
  forwards of both models (the trainer's log-probs) up to cache-vs-forward rounding."""
  from prefjax.rl.rollout import score
  pol, ref = _model(0, 0.05), _model(1, 0.05)
  s = judge.JudgeSettings(n_samples=2, max_new_tokens=8, max_len=32, batch_size=4,
                          temperature=1.0, logps_chunk=None)
  metrics, _ = judge.judge(pol, ref, TOK, _items(4), source=_verifier(), taskset=_TaskSet(),
                           settings=s)
  side = judge.judge_side(pol, TOK, _items(4), source=_verifier(), taskset=_TaskSet(),
                          settings=s)
  kls = []
  for v in side.views:
    lp, _, ref_lp = score(pol[0], pol[1], ref[0], ref[1], jax.tree.map(np.asarray, v.batch))
    kls.append(np.asarray(lp - ref_lp).sum(-1))
  want = float(np.concatenate(kls).mean())
  assert abs(want) > 1e-2
  assert abs(metrics["kl_to_reference"] - want) < 1e-4
