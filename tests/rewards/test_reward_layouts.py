"""Reward models on prefix-shared / packed rows equal the plain rows, in training and scoring.

Training: the Bradley-Terry loss and its gradients through the shared step (SGD with lr 1,
so new - old params = -grad) on a packed batch vs the same pairs as plain rows. Scoring:
``RewardScorer(layout="prefix")`` (responses to one prompt share a unit) vs
``layout="plain"`` (one row per response), including responses and prompts cut to fit.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from prefjax import sharding
from prefjax.data import layout, pipeline
from prefjax.models import make_config
from prefjax.rewards.model import RewardModel
from prefjax.rewards.scorer import RewardScorer
from prefjax.testbed import world
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train.objective import make_objective
from prefjax.train.step import init_state, make_train_step

TOK = TestbedTokenizer()
MAX_LEN = 32


def _reward_model(seed=0):
  cfg = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
      dim=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=64))
  m = RewardModel(cfg, nnx.Rngs(seed))
  m.head[...] = jax.random.normal(jax.random.key(seed + 7), m.head[...].shape)   # not zero
  graphdef, state = nnx.split(m)
  return m, graphdef, nnx.to_pure_dict(state)


def _step(batch):
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  model, graphdef, params = _reward_model()
  param_sh = sharding.param_shardings(model, mesh)
  objective = make_objective("bradley_terry", {})
  tx = optax.sgd(1.0)
  state, state_sh = init_state(jax.tree.map(jnp.copy, params), tx, param_sh)
  step = make_train_step(graphdef, objective, tx, lambda s: 1.0, state_shardings=state_sh,
                         batch_sharding=sharding.batch_sharding(mesh), donate=False)
  new, m = step(state, batch, None)
  grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), params, new["params"])
  return float(m["loss"]), grads


def test_packed_reward_batch_equals_plain_in_loss_and_gradients():
  exs = world.preference_pairs(world.WorldConfig(tasks=("sort",)), 5)
  plain = pipeline.stack([pipeline.encode_pair(TOK, MAX_LEN)(e) for e in exs])
  enc = layout.make_encoder("pairwise", TOK, MAX_LEN, layout="packed", batch_size=6, rows=2,
                            row_len=3 * MAX_LEN)
  packed = enc(exs)             # 5 pairs in 6 example slots: one empty slot, masked out
  assert packed["rows_segment_ids"].max() >= 2            # several units share a row
  plain = {k: np.concatenate([v, v[:1]]) for k, v in plain.items()}
  plain["example_mask"] = (np.arange(6) < 5).astype(np.float32)
  (la, ga), (lb, gb) = _step(plain), _step(packed)
  assert abs(la - np.log(2)) > 1e-3                        # a non-trivial loss
  np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  assert max(float(np.abs(x).max()) for x in jax.tree.leaves(ga)) > 1e-3


def test_slot_rewards_equal_each_sides_plain_row():
  m, _, _ = _reward_model(1)
  exs = world.preference_pairs(world.WorldConfig(tasks=("sort",)), 3)
  enc = layout.make_encoder("pairwise", TOK, MAX_LEN, layout="prefix", batch_size=3)
  got = np.asarray(m.slot_rewards(enc(exs), 3, 2))                        # [B, 2]
  plain = pipeline.stack([pipeline.encode_pair(TOK, MAX_LEN)(e) for e in exs])
  want = np.stack([np.asarray(m.rewards(plain, "chosen_")),
                   np.asarray(m.rewards(plain, "rejected_"))], 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(want[:, 0] - want[:, 1]).max() > 1e-4


def test_prefix_scoring_equals_plain_scoring_with_shared_prompts_and_cuts():
  _, graphdef, params = _reward_model(2)
  rng = np.random.default_rng(0)
  nums = lambda k: ",".join(str(x) for x in rng.integers(0, 9, k))
  prompts, responses = [], []
  for i in range(7):
    p = "sort:" + nums(int(rng.integers(1, 5)) if i % 2 else int(rng.integers(5, 16)))
    for _ in range(8 if i == 0 else 1 + i % 3):   # 1-3 per prompt (8: several groups)
      prompts.append(p)
      responses.append(nums(int(rng.integers(1, 8)) if rng.random() < 0.8 else 16))
  order = rng.permutation(len(prompts))
  prompts, responses = [prompts[i] for i in order], [responses[i] for i in order]
  plain = RewardScorer(graphdef, params, TOK, max_len=MAX_LEN, batch_size=4, layout="plain")
  prefix = RewardScorer(graphdef, params, TOK, max_len=MAX_LEN, batch_size=4)
  want = plain.score(prompts, responses)
  got = prefix.score(prompts, responses)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert plain.last_truncated.any() and not plain.last_truncated.all()   # cuts exercised
  np.testing.assert_array_equal(prefix.last_truncated, plain.last_truncated)
  np.testing.assert_array_equal(prefix.last_tokens, plain.last_tokens)
  assert np.unique(np.round(want, 4)).size > len(want) // 2


def test_implicit_prefix_scoring_equals_plain_scoring():
  from prefjax.models.transformer import Transformer
  from prefjax.rewards.implicit import ImplicitRewardScorer
  cfg = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
      dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=64))
  graphdef, ps = nnx.split(Transformer(cfg, nnx.Rngs(0)))
  _, rs = nnx.split(Transformer(cfg, nnx.Rngs(1)))
  ps, rs = nnx.to_pure_dict(ps), nnx.to_pure_dict(rs)
  rng = np.random.default_rng(1)
  nums = lambda k: ",".join(str(x) for x in rng.integers(0, 9, k))
  prompts, responses = [], []
  for _ in range(6):
    p = "sort:" + nums(int(rng.integers(1, 30)))
    prompts += [p, p]
    responses += [nums(int(rng.integers(1, 20))), nums(int(rng.integers(1, 20)))]
  for normalize in (False, True):
    kw = dict(beta=0.5, max_len=MAX_LEN, batch_size=4, normalize=normalize)
    plain = ImplicitRewardScorer(graphdef, ps, rs, TOK, layout="plain", **kw)
    prefix = ImplicitRewardScorer(graphdef, ps, rs, TOK, **kw)
    want, got = plain.score(prompts, responses), prefix.score(prompts, responses)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    np.testing.assert_array_equal(prefix.last_truncated, plain.last_truncated)
    assert plain.last_truncated.any() and np.abs(want).max() > 1e-2
