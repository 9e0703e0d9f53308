"""PPO ("ppo") and the token-level reward model ("token") run through THE shared step."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prefjax import sharding
from prefjax.data import pipeline
from prefjax.data.collate import pack, stack
from prefjax.models import make_config
from prefjax.rewards.token_model import TokenRewardModel, edit_pairs, encode_edit_pair
from prefjax.rl.actor_critic import ActorCritic
from prefjax.testbed import world
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train import step as step_lib
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer

TOK = TestbedTokenizer()
CFG = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
    dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32))


def _compile(model, loss, hparams, per_token=None, steps=30, lr=3e-3):
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  param_sh = sharding.param_shardings(model, mesh)
  objective = make_objective(loss, hparams, per_token=per_token)
  tx, schedule = make_optimizer(lr, steps)
  st, st_sh = step_lib.init_state(params, tx, param_sh)
  fn = step_lib.make_train_step(graphdef, objective, tx, schedule, state_shardings=st_sh,
                                batch_sharding=sharding.batch_sharding(mesh),
                                ref_shardings=param_sh)
  return fn, st, graphdef


def _ppo_batch(model, seed=0, b=8):
  exs = world.sft_examples(world.WorldConfig(seed=seed), b)
  rows = stack([pack(TOK.encode_prompt(e["prompt"]), TOK.encode_completion(e["response"]),
                     32)[0] for e in exs])
  graphdef, params = nnx.split(model)
  lp, _, _ = jax.jit(lambda p, r: nnx.merge(graphdef, p).evaluate(r))(params, rows)
  m = rows["loss_mask"].astype(np.float32)
  rng = np.random.default_rng(seed)
  batch = dict(rows)
  batch.update(
      old_token_logps=np.asarray(lp) * m, ref_token_logps=np.asarray(lp) * m,
      old_values=np.zeros_like(m), advantages=rng.normal(size=m.shape).astype(np.float32) * m,
      returns=rng.normal(size=m.shape).astype(np.float32) * m,
      kl_coefs=np.zeros(b, np.float32), example_mask=np.ones(b, np.float32),
      truncated=np.zeros(b, np.float32))
  return batch


@pytest.fixture(scope="module")
def ppo_setup():
  model = ActorCritic(CFG, nnx.Rngs(0), critic="shared")
  batch = _ppo_batch(model)
  fn, st, _ = _compile(model, "ppo", {"vf_coef": 0.5, "entropy_coef": 0.0}, per_token=True)
  return batch, fn, st


def test_ppo_first_step_closed_form_and_learning(ppo_setup):
  batch, fn, st = ppo_setup
  st, m = fn(st, batch, None)
  # ratio = 1 and V = 0 (zero head): token mean of -A + vf_coef * R^2 / 2.
  mask = batch["loss_mask"]
  want = ((-batch["advantages"] + 0.25 * batch["returns"] ** 2) * mask).sum() / mask.sum()
  assert float(m["loss"]) == pytest.approx(float(want), rel=1e-5)
  assert float(m["ppo/clip_fraction"]) == 0.0
  first_pg = float(m["ppo/policy_loss"])
  for _ in range(10):
    st, m = fn(st, batch, None)
  assert float(m["ppo/policy_loss"]) < first_pg - 0.05     # the surrogate improves
  assert float(m["ppo/value_loss"]) < float(0.5 * ((batch["returns"] ** 2 * mask).sum(-1)
                                                    / mask.sum(-1)).mean())


def test_ppo_step_runs_one_model_call_and_no_reference_pass():
  model = ActorCritic(CFG, nnx.Rngs(0), critic="none")
  batch = _ppo_batch(model)
  fn, st, _ = _compile(model, "ppo", {"vf_coef": 0.0}, per_token=False)
  calls = []
  original = ActorCritic.__call__

  def counting(self, *a, **k):
    calls.append(a[0].shape)
    return original(self, *a, **k)

  ActorCritic.__call__ = counting
  try:
    fn.lower(st, batch, None)
  finally:
    ActorCritic.__call__ = original
  assert calls == [(8, 32)]       # reference log-probs travel as batch fields


def test_token_reward_model_through_the_step():
  model = TokenRewardModel(CFG, nnx.Rngs(0))
  pairs = world.preference_pairs(world.WorldConfig(seed=0), 256)
  exs = edit_pairs(pairs)
  assert exs and all(e["original"] != e["edited"] for e in exs)
  enc = encode_edit_pair(TOK, 32)
  batches = pipeline.batched(exs, enc, 16, seed=0, num_steps=40)
  fn, st, _ = _compile(model, "token_bt", {"label_coef": 0.0}, steps=40, lr=3e-3)
  st, m = fn(st, batches[0], None)
  assert float(m["loss"]) == pytest.approx(math.log(2.0), rel=1e-6)   # zero head: R_w = R_l
  for i in range(1, 40):
    st, m = fn(st, batches[i], None)
  assert float(m["rewards/accuracies"]) >= 0.75 and float(m["loss"]) < 0.6


def test_edit_labels_align_with_the_flawed_characters():
  ex = {"id": "x", "prompt": "sort:3,1,2", "original": "1,3,2", "edited": "1,2,3",
        "flawed_mask": [0, 0, 1, 0, 1]}
  row = encode_edit_pair(TOK, 32)(ex)
  start = len(TOK.encode_prompt(ex["prompt"])) - 1
  lab = row["rejected_flaw_labels"]
  assert lab[start + 2] == 1 and lab[start + 4] == 1 and lab.sum() == 2
  # Targets at the labelled positions are the flawed characters "3" and "2".
  assert TOK.decode(row["rejected_target_ids"][[start + 2, start + 4]]) == "32"
  # Without a per-character mask, a token diff (difflib, not minimal) marks a superset.
  lab2 = encode_edit_pair(TOK, 32)(dict(ex, flawed_mask=[]))["rejected_flaw_labels"]
  assert np.all(lab2 >= lab) and lab2.sum() == 3
