"""Group rows (each group's prompt once) give the plain rows' log-probs, values, entropies and
gradients, on a random prefjax model, with and without a sliding attention window."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prefjax.data.collate import pack, stack
from prefjax.models import make_config
from prefjax.rl import shared_rows
from prefjax.rl.actor_critic import ActorCritic
from prefjax.train.objective import forward_ppo

V, G = 40, 3
# two groups of G samples; completion lengths differ (1 to 6 tokens)
PROMPTS = [[1, 5, 9, 3, 7], [1, 8, 2, 6, 4, 11, 13]]
ANSWERS = [[[20, 21, 2], [22], [23, 24, 25, 26, 27, 2]],
           [[30, 31], [32, 33, 34, 2], [35, 2]]]
OUTPUTS = ("policy_token_logps", "policy_values", "policy_entropy")


def _model(critic="shared", **over):
  cfg = make_config(None, vocab_size=V, overrides=dict(
      dim=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4, mlp_dim=24, max_len=64, **over))
  graphdef, state = nnx.split(ActorCritic(cfg, nnx.Rngs(0), critic=critic))
  params = nnx.to_pure_dict(state)
  if critic != "none":          # a non-zero value head, so the values say something
    params["value_head"] = jax.random.normal(jax.random.key(1), params["value_head"].shape)
  return graphdef, params


def _plain_batch(t=20):
  rows = stack([pack(p, a, t)[0] for p, group in zip(PROMPTS, ANSWERS) for a in group])
  b = len(rows["input_ids"])
  rng = np.random.default_rng(0)
  rows.update({k: rng.normal(size=(b, t)).astype(np.float32)
               for k in ("old_token_logps", "old_values", "ref_token_logps", "advantages",
                         "returns")})
  rows["kl_coefs"] = np.zeros(b, np.float32)
  return rows


def _grouped(batch):
  out = {k: v for k, v in batch.items() if k not in ("input_ids", "target_ids", "positions",
                                                     "segment_ids")}
  out.update(shared_rows.group_rows(batch["input_ids"], batch["target_ids"],
                                    batch["loss_mask"], G))
  return out


def test_group_rows_hold_each_prompt_once():
  plain = _plain_batch()
  g = shared_rows.group_rows(plain["input_ids"], plain["target_ids"], plain["loss_mask"], G)
  assert g["rows_input_ids"].shape[0] == 2
  # prompt - 1 tokens, then every answer once: 4 + (3 + 1 + 6) and 6 + (2 + 4 + 2)
  np.testing.assert_array_equal(g["rows_segment_ids"].sum(-1), [14, 14])
  np.testing.assert_array_equal(g["rows_input_ids"][0, :6], [1, 5, 9, 3, 7, 20])
  np.testing.assert_array_equal(g["rows_branch_ids"][0, :9], [0, 0, 0, 0, 1, 1, 1, 2, 3])
  # each completion action reads the column that predicts the same token
  for i in range(plain["input_ids"].shape[0]):
    act = plain["loss_mask"][i] > 0
    cols = g["rows_gather"][i][act]
    np.testing.assert_array_equal(g["rows_target_ids"][i // G][cols],
                                  plain["target_ids"][i][act])
    np.testing.assert_array_equal(g["rows_positions"][i // G][cols],
                                  plain["positions"][i][act])


@pytest.mark.parametrize("over", [{}, {"sliding_window": 4}], ids=["global", "window4"])
@pytest.mark.parametrize("chunk", [None, 16])
def test_group_rows_give_the_plain_rows_outputs(over, chunk):
  graphdef, params = _model(**over)
  model = nnx.merge(graphdef, params)
  plain = _plain_batch()
  want = forward_ppo(model, {k: jnp.asarray(v) for k, v in plain.items()}, chunk_size=chunk)
  got = forward_ppo(model, {k: jnp.asarray(v) for k, v in _grouped(plain).items()},
                    chunk_size=chunk)
  for k in OUTPUTS:
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), atol=2e-5, err_msg=k)
  assert float(np.abs(np.asarray(want["policy_token_logps"])).sum()) > 1.0


@pytest.mark.parametrize("critic", ["shared", "separate", "none"])
def test_group_rows_give_the_plain_rows_gradients(critic):
  graphdef, params = _model(critic=critic)
  plain = _plain_batch()
  w = np.random.default_rng(1).normal(size=plain["loss_mask"].shape).astype(np.float32)

  def loss(p, batch):
    out = forward_ppo(nnx.merge(graphdef, p), batch)
    return jnp.sum(out["policy_token_logps"] * w) + jnp.sum(out["policy_values"] * w)

  args = [{k: jnp.asarray(v) for k, v in b.items()} for b in (plain, _grouped(plain))]
  (l0, g0), (l1, g1) = (jax.value_and_grad(loss)(params, b) for b in args)
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5, rtol=1e-4)


def test_rows_that_are_not_whole_groups_are_errors():
  plain = _plain_batch()
  args = (plain["input_ids"], plain["target_ids"], plain["loss_mask"])
  with pytest.raises(ValueError, match="are not whole groups of 4"):
    shared_rows.group_rows(*args, 4)
  with pytest.raises(ValueError, match="row 3 does not share its group's prompt"):
    shared_rows.group_rows(*args, 2)
  empty = plain["loss_mask"].copy()
  empty[1] = 0
  with pytest.raises(ValueError, match="row 1 has no completion action"):
    shared_rows.group_rows(plain["input_ids"], plain["target_ids"], empty, G)


@pytest.mark.parametrize("policy", [True, False])
def test_rollout_scores_groups_once_per_prompt(policy):
  """The rollout's train-side forward on group rows (repeated prompts) equals the plain
  rows' policy and reference log-probs and values."""
  from prefjax.rl.rollout import RolloutConfig, _scored_rows, score
  graphdef, params = _model()
  ref_graphdef, ref_params = _model(critic="none")
  ref_graphdef, ref_params = nnx.split(nnx.merge(ref_graphdef, ref_params).lm)
  ref_params = nnx.to_pure_dict(ref_params)
  plain = {k: jnp.asarray(v) for k, v in _plain_batch().items()
           if k in ("input_ids", "target_ids", "positions", "segment_ids", "loss_mask")}
  prompts = [p for p in PROMPTS for _ in range(G)]
  cfg = RolloutConfig(max_len=20, max_new_tokens=6)
  grouped = _scored_rows(plain, prompts, cfg)
  assert "rows_gather" in grouped
  assert _scored_rows(plain, prompts, RolloutConfig(max_len=20, max_new_tokens=6,
                                                    share_prefix=False)) is plain
  want = score(graphdef, params, ref_graphdef, ref_params, plain, policy=policy)
  got = score(graphdef, params, ref_graphdef, ref_params, grouped, policy=policy)
  for a, b in zip(want, got):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-5)
  assert float(np.abs(np.asarray(want[2])).sum()) > 1.0
