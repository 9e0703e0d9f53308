"""Reward scorers run length-sorted, bucket-trimmed batches with unchanged results."""
import jax
import numpy as np
from flax import nnx

from prefjax.data.collate import pack, stack
from prefjax.models import make_config
from prefjax.models.transformer import Transformer
from prefjax.rewards.implicit import ImplicitRewardScorer
from prefjax.rewards.model import RewardModel
from prefjax.rewards.scorer import RewardScorer, batched_apply
from prefjax.testbed.tokenizer import TestbedTokenizer

MAX_LEN = 80


def _cfg():
  return make_config("testbed-tiny", vocab_size=64, overrides=dict(n_layers=1, dim=32,
                                                                  head_dim=8, mlp_dim=64))


def _texts(n=9, seed=0):
  rng = np.random.default_rng(seed)
  nums = lambda k: ",".join(str(x) for x in rng.integers(0, 9, k))
  prompts = ["sort:" + nums(int(rng.integers(1, 25))) for _ in range(n)]
  return prompts, [nums(int(rng.integers(1, 12))) for _ in range(n)]


def test_batched_apply_sorts_trims_and_restores_order():
  tok = TestbedTokenizer()
  prompts, resp = _texts()
  rows = [pack(tok.encode_prompt(p), tok.encode_completion(r), MAX_LEN)[0]
          for p, r in zip(prompts, resp)]
  seen = []

  def fn(batch):
    seen.append(batch["input_ids"].shape)
    return np.stack([batch["segment_ids"].sum(-1), batch["input_ids"].sum(-1)], -1)

  got = batched_apply(fn, rows, batch_size=2, smallest_bucket=16)
  want = np.stack([[r["segment_ids"].sum(), r["input_ids"].sum()] for r in rows])
  np.testing.assert_array_equal(got, want)
  assert len({s[1] for s in seen}) >= 2 and min(s[1] for s in seen) < MAX_LEN
  assert all(s[0] == 2 for s in seen)


def test_reward_scorer_equals_one_unsorted_batch():
  m = RewardModel(_cfg(), nnx.Rngs(0))
  m.head[...] = jax.random.normal(jax.random.key(1), m.head[...].shape)
  graphdef, state = nnx.split(m)
  tok = TestbedTokenizer()
  prompts, resp = _texts()
  got = RewardScorer(graphdef, nnx.to_pure_dict(state), tok, max_len=MAX_LEN,
                     batch_size=4).score(prompts, resp)
  want = m.rewards(stack([pack(tok.encode_prompt(p), tok.encode_completion(r), MAX_LEN)[0]
                         for p, r in zip(prompts, resp)]))          # one unsorted max_len batch
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_implicit_scorer_equals_one_row_at_a_time():
  pol, ref = Transformer(_cfg(), nnx.Rngs(0)), Transformer(_cfg(), nnx.Rngs(1))
  graphdef, ps = nnx.split(pol)
  _, rs = nnx.split(ref)
  tok = TestbedTokenizer()
  prompts, resp = _texts()
  got = ImplicitRewardScorer(graphdef, nnx.to_pure_dict(ps), nnx.to_pure_dict(rs), tok,
                             beta=0.5, max_len=MAX_LEN, batch_size=4).score(prompts, resp)

  def logp(model, p, r):
    row = stack([pack(tok.encode_prompt(p), tok.encode_completion(r), MAX_LEN)[0]])
    logits, _ = model(row["input_ids"], row["positions"], row["segment_ids"])
    lp = jax.nn.log_softmax(logits[0], -1)
    tok_lp = np.take_along_axis(np.asarray(lp), row["target_ids"][0][:, None], -1)[:, 0]
    return float((tok_lp * row["loss_mask"][0]).sum())

  sums = [(logp(pol, p, r), logp(ref, p, r)) for p, r in zip(prompts, resp)]
  want = [0.5 * (a - b) for a, b in sums]
  # a difference of two float32 sums of up to |sum| log-probs, each computed in another
  # order (prefix-shared rows, chunked head): 1e-6 of the larger sum
  tol = 1e-6 * max(max(abs(a), abs(b)) for a, b in sums)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=max(tol, 1e-5))
