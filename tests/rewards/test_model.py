"""RewardModel reads the last completion token; the reward forward feeds the shared step."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prefjax.data.collate import pack, stack
from prefjax.models import make_config
from prefjax.rewards.model import RewardModel, last_completion_index
from prefjax.rewards.scorer import RewardScorer
from prefjax.testbed.tokenizer import TestbedTokenizer


def _model():
  cfg = make_config("testbed-tiny", vocab_size=64, overrides=dict(n_layers=1, dim=32,
                                                                  head_dim=8, mlp_dim=64))
  m = RewardModel(cfg, nnx.Rngs(0))
  m.head[...] = jax.random.normal(jax.random.key(1), m.head[...].shape)   # non-trivial head
  return m


def _rows(prompt, completion, max_len=24):
  tok = TestbedTokenizer()
  row, _ = pack(tok.encode_prompt(prompt), tok.encode_completion(completion), max_len)
  return row


def test_last_completion_index():
  mask = jnp.array([[0, 1, 1, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(last_completion_index(mask), [2, 4, 0])


def test_reads_last_completion_token_only():
  m = _model()
  row = _rows("sort:3,1", "1,3")
  b = stack([row])
  r0 = float(m.rewards(b)[0])
  t = int(last_completion_index(jnp.asarray(b["loss_mask"]))[0])
  # the input at t is the last completion token; its target is EOS
  assert b["target_ids"][0, t] == TestbedTokenizer.eos_id
  after = {k: v.copy() for k, v in b.items()}
  after["input_ids"][0, t + 1:] = 7                    # tokens after it / padding
  after["segment_ids"][0, t + 1:] = 1
  after["positions"][0, t + 1:] = np.arange(t + 1, b["input_ids"].shape[1])
  assert abs(float(m.rewards(after)[0]) - r0) < 1e-5
  longer = stack([_rows("sort:3,1", "1,3", max_len=40)])   # more padding
  assert abs(float(m.rewards(longer)[0]) - r0) < 1e-5
  changed = {k: v.copy() for k, v in b.items()}
  changed["input_ids"][0, t] = changed["input_ids"][0, t] + 1   # the last completion token
  assert abs(float(m.rewards(changed)[0]) - r0) > 1e-4


def test_scorer_matches_model_and_handles_leading_dims():
  m = _model()
  graphdef, state = nnx.split(m)
  params = nnx.to_pure_dict(state)
  tok = TestbedTokenizer()
  scorer = RewardScorer(graphdef, params, tok, max_len=24, batch_size=2)
  prompts, resp = ["sort:3,1", "sort:2,1", "add:1+2"], ["1,3", "2,1", "3"]
  got = scorer.score(prompts, resp)
  want = np.array([float(m.rewards(stack([_rows(p, r)]))[0]) for p, r in zip(prompts, resp)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  grouped = stack([_rows(p, r) for p, r in zip(prompts, resp)])
  grouped = {k: v[None] for k, v in grouped.items()}                      # [1, 3, T]
  np.testing.assert_allclose(np.asarray(m.rewards(grouped))[0], want, rtol=1e-5, atol=1e-6)
