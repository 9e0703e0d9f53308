"""TokenRewardModel: r_t = (h_t W)[a_t] + b[a_t], checked against a plain-numpy read-out of
the backbone's hidden states; prefix-shared edit rows give the plain rows' token rewards."""
import jax
import numpy as np
import pytest
from flax import nnx

from prefjax.data import pipeline
from prefjax.models import make_config
from prefjax.rewards.token_model import TokenRewardModel, encode_edit_pair
from prefjax.rl.shared_rows import edit_pair_rows
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train.objective import forward_token, make_objective


def test_token_rewards_are_the_actions_entries_of_the_full_head():
  cfg = make_config("testbed-tiny", vocab_size=64, overrides=dict(n_layers=1, dim=32,
                                                                  head_dim=8, mlp_dim=64))
  m = TokenRewardModel(cfg, nnx.Rngs(0))
  m.w[...] = jax.random.normal(jax.random.key(1), m.w[...].shape)
  m.b[...] = jax.random.normal(jax.random.key(2), m.b[...].shape)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, (3, 10))
  actions = rng.integers(0, 64, (3, 10))
  positions = np.tile(np.arange(10), (3, 1))
  segments = np.ones((3, 10), np.int32)
  got = np.asarray(m(tokens, positions, segments, actions))
  h, _ = m.backbone(tokens, positions, segments, return_hidden=True)
  q = np.asarray(h, np.float64) @ np.asarray(m.w[...], np.float64) + np.asarray(m.b[...])
  want = np.take_along_axis(q, actions[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert got.shape == (3, 10) and np.std(got) > 0.1


def test_prefix_shared_edit_rows_give_the_plain_rows_token_rewards():

  cfg = make_config("testbed-tiny", vocab_size=64, overrides=dict(n_layers=2, dim=32,
                                                                  head_dim=8, mlp_dim=64))
  m = TokenRewardModel(cfg, nnx.Rngs(0))
  m.w[...] = jax.random.normal(jax.random.key(1), m.w[...].shape)
  examples = [{"id": str(i), "prompt": p, "original": o, "edited": e, "flawed_mask": []}
              for i, (p, o, e) in enumerate([("abc", "dd e", "dd f"), ("ab", "xyz", "xz"),
                                             ("cabba", "q", "qrs")])]
  enc = encode_edit_pair(TestbedTokenizer(), 24)
  batch = next(iter(pipeline.eval_batches(examples, enc, 4, bucket=False)))   # 1 padding row
  assert np.asarray(batch["example_mask"]).tolist() == [1, 1, 1, 0]
  plain = forward_token(m, batch)
  shared = forward_token(m, edit_pair_rows(batch, width=32))
  assert shared is not plain
  assert edit_pair_rows(batch, width=32)["rows_input_ids"].shape == (4, 32)
  mask = np.asarray(batch["example_mask"])[:, None]
  for k in ("chosen_token_rewards", "rejected_token_rewards"):
    np.testing.assert_allclose(np.asarray(shared[k]) * mask, np.asarray(plain[k]) * mask,
                               rtol=1e-4, atol=1e-5)
  assert np.abs(np.asarray(plain["rejected_token_rewards"])).sum() > 0.1
  obj = make_objective("token_bt", {"label_coef": 1.0})
  la, _ = obj.loss(plain, {})
  lb, _ = obj.loss(shared, {})
  np.testing.assert_allclose(np.asarray(la)[:3], np.asarray(lb)[:3], rtol=1e-4, atol=1e-5)


def test_edit_pair_rows_name_a_width_too_short_for_a_pair():

  ex = [{"id": "0", "prompt": "abcabc", "original": "dddd", "edited": "ddde", "flawed_mask": []}]
  batch = next(iter(pipeline.eval_batches(ex, encode_edit_pair(TestbedTokenizer(), 24), 1,
                                          bucket=False)))
  with pytest.raises(ValueError, match="more than width=8"):
    edit_pair_rows(batch, width=8)
