"""Rollout: sampler vs train-side log-probs, packed rows, reward placement, determinism."""
import jax
import numpy as np
import pytest
from flax import nnx

from prefjax.errors import DataError
from prefjax.models import Transformer, make_config
from prefjax.rl import reward_sources as rw
from prefjax.rl.actor_critic import ActorCritic
from prefjax.rl.rollout import RolloutConfig, rollout
from prefjax.testbed.tokenizer import TestbedTokenizer

TOK = TestbedTokenizer()
CFG = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
    dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32))
PROMPTS = ["sort:3,1,2", "sort:9,4", "sort:5,5,1,0", "sort:7,2,2"]


@pytest.fixture(scope="module")
def setup():
  ac = ActorCritic(CFG, nnx.Rngs(0), critic="shared")
  graphdef, state = nnx.split(ac)
  params = nnx.to_pure_dict(state)
  # Softer logits than the random init (embed scale 1) so samples vary and end tokens occur.
  params["lm"]["embed"] = params["lm"]["embed"] * 0.05
  ref_model = Transformer(CFG, nnx.Rngs(1))
  ref_gd, ref_state = nnx.split(ref_model)
  ref_params = nnx.to_pure_dict(ref_state)
  cfg = RolloutConfig(max_len=32, max_new_tokens=10, eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                      missing_eos="penalty", missing_eos_penalty=-0.5)
  ids = [TOK.encode_prompt(p) for p in PROMPTS] * 4
  src = rw.RewardSource("len", "sequence", lambda v: np.array([len(y) for y in v.completions],
                                                                np.float32))

  def run(seed, ref=(ref_gd, ref_params)):
    return rollout((graphdef, params), ref, ids,
                   rng=jax.random.key(seed), cfg=cfg, tokenizer=TOK,
                   reward_sources=[(src, 1.0)], prompt_texts=PROMPTS * 4)

  run.lm = (nnx.split(ac.lm)[0], params["lm"])
  return run, ids, params, cfg


def test_sampler_and_train_side_log_probs_agree(setup):
  run, _, _, _ = setup
  exp, m, _ = run(0)
  assert m["rollout/logprob_mismatch_max"] < 1e-4
  assert np.isfinite(np.asarray(exp.old_token_logps)).all()


def test_rows_rewards_and_end_tokens(setup):
  run, ids, _, cfg = setup
  exp, m, view = run(0)
  mask = np.asarray(exp.completion_mask)
  tgt = np.asarray(exp.target_ids)
  last = rw.last_action_index(mask)
  eos = np.asarray(exp.eos_emitted)
  assert eos.any() and (~eos).any(), "fixture should give both kinds of rows"
  for i, p in enumerate(ids):
    assert np.nonzero(mask[i])[0][0] == len(p) - 1             # first action after the prompt
    if eos[i]:
      assert tgt[i, last[i]] == TOK.eos_id
    else:
      assert mask[i].sum() == cfg.max_new_tokens and tgt[i, last[i]] != TOK.eos_id
    want = len(view.completions[i]) + (0.0 if eos[i] else -0.5)
    r = np.asarray(exp.rewards)[i]
    assert r[last[i]] == pytest.approx(want) and r.sum() == pytest.approx(want)
  # The packed inputs are the prompt followed by the sampled tokens.
  assert list(np.asarray(exp.input_ids)[0, :len(ids[0])]) == ids[0]


def test_deterministic_given_the_rng(setup):
  run, _, _, _ = setup
  a, _, _ = run(3)
  b, _, _ = run(3)
  c, _, _ = run(4)
  np.testing.assert_array_equal(a.target_ids, b.target_ids)
  np.testing.assert_array_equal(a.old_token_logps, b.old_token_logps)
  assert not np.array_equal(np.asarray(a.target_ids), np.asarray(c.target_ids))


def test_reference_equal_to_policy_gives_equal_log_probs(setup):
  run, _, _, _ = setup
  exp, _, _ = run(0, ref=run.lm)
  np.testing.assert_allclose(exp.ref_token_logps, exp.old_token_logps, atol=1e-6)
  other, _, _ = run(0)
  assert np.abs(np.asarray(other.ref_token_logps - other.old_token_logps)).max() > 1e-2
  assert np.all(np.asarray(exp.values) == 0)       # the critic's head starts at zero


def test_prompt_longer_than_max_len_is_one_line(setup):
  run, ids, params, cfg = setup
  graphdef = None
  long = [[TOK.bos_id] + TOK.encode("sort:" + ",".join("1" * 12))]
  with pytest.raises(DataError, match=r"rollout prompt 0 has \d+ tokens; with max_new_tokens=10"):
    rollout((graphdef, params), (graphdef, params), long, rng=jax.random.key(0), cfg=cfg,
            tokenizer=TOK)


def test_sampler_log_probs_stand_in_for_the_trainers_when_asked():
  """old_logps="sampler" skips the policy's forward: the decode's log-probs, on the rows'
  action grid, equal the trainer's full-forward log-probs (float32, <= 1e-5)."""
  import dataclasses
  model = Transformer(CFG, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  params["embed"] = params["embed"] * 0.05
  cfg = RolloutConfig(max_len=32, max_new_tokens=10, eos_id=TOK.eos_id, pad_id=TOK.pad_id,
                      missing_eos="none")
  ids = [TOK.encode_prompt(p) for p in PROMPTS] * 2
  kw = dict(rng=jax.random.key(3), tokenizer=TOK, prompt_texts=PROMPTS * 2)
  full, m, _ = rollout((graphdef, params), (graphdef, params), ids, cfg=cfg, **kw)
  samp, m2, _ = rollout((graphdef, params), (graphdef, params), ids,
                        cfg=dataclasses.replace(cfg, old_logps="sampler"), **kw)
  np.testing.assert_array_equal(np.asarray(full.input_ids), np.asarray(samp.input_ids))
  np.testing.assert_allclose(np.asarray(samp.old_token_logps), np.asarray(full.old_token_logps),
                             atol=1e-5)
  assert m["rollout/logprob_mismatch_max"] <= 1e-5
  assert "rollout/logprob_mismatch_max" not in m2
