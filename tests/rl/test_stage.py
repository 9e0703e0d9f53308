"""The RL stage: exact resumption after an interruption, and one-line config errors."""
import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from prefjax import sharding
from prefjax.errors import ConfigError
from prefjax.models import Transformer, make_config
from prefjax.rl import stage as stage_lib
from prefjax.rl.actor_critic import ActorCritic, with_critic_backbone
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train.config import base_config
from prefjax.train.data_source import DataSource
from prefjax.train.metrics_writer import MetricsWriter
from prefjax.train.stages import RunContext

TOK = TestbedTokenizer()
CFG = make_config(None, vocab_size=TOK.vocab_size, overrides=dict(
    dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32))


def _config():
  c = base_config()
  c.rl = stage_lib.rl_config()
  r = c.rl
  r.iterations, r.rollout_batch_size, r.minibatch_size, r.ppo_epochs = 3, 8, 4, 1
  r.n_prompts, r.max_new_tokens, r.lr = 32, 12, 1e-3
  r.kl.adaptive, r.kl.target, r.kl.horizon = True, 0.01, 16.0   # the coefficient moves
  c.progress, c.tensorboard = False, False
  return c


class InterruptingWriter(MetricsWriter):
  """Stops the run (like kill -9) when step ``at`` is logged, before its checkpoint."""

  def __init__(self, workdir, at):
    super().__init__(workdir, tensorboard=False)
    self.at = at

  def write(self, stage, step, values):
    if step == self.at:
      raise KeyboardInterrupt
    super().write(stage, step, values)


def _run(workdir, writer=None, checkpoint_every=1):
  c = _config()
  c.rl.checkpoint_every = checkpoint_every
  model = Transformer(CFG, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  params["embed"] = params["embed"] * 0.05             # softer logits: end tokens occur
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  ctx = RunContext(
      config=c, graphdef=graphdef, model_cfg=CFG, tokenizer=TOK, mesh=mesh,
      param_shardings=sharding.param_shardings(model, mesh), workdir=str(workdir),
      writer=writer or MetricsWriter(str(workdir), tensorboard=False),
      data=DataSource(c, TOK))
  return stage_lib.run_rl_stage(ctx, c.rl, params, jax.tree.map(np.copy, params))


def _lines(workdir):
  out = []
  for line in open(workdir / "metrics.jsonl"):
    d = json.loads(line)
    for k in ("seconds_per_rollout", "seconds_per_step", "tokens_per_sec", "compiled_steps"):
      d.pop(k, None)
    out.append(d)
  return out


@pytest.mark.slow
def test_interrupted_run_resumes_exactly(tmp_path):
  a = _run(tmp_path / "a")
  with pytest.raises(KeyboardInterrupt):             # 2 updates per iteration
    _run(tmp_path / "b", InterruptingWriter(str(tmp_path / "b"), at=4))
  b = _run(tmp_path / "b")                           # resumes from iteration 1
  jax.tree.map(np.testing.assert_array_equal, a, b)
  la, lb = _lines(tmp_path / "a"), _lines(tmp_path / "b")
  assert [d["step"] for d in lb] == [2, 4, 6]
  assert [d["rl/iteration"] for d in lb] == [1, 2, 3]
  assert la == lb                                    # rollouts, rewards, KL coefficient, losses
  coefs = [d["kl/coef"] for d in la]
  assert coefs[0] == 0.05 and coefs[1] != coefs[0]   # the adaptive controller acted


def test_checkpoint_every_0_writes_no_checkpoint_and_trains_the_same(tmp_path):
  a = _run(tmp_path / "a")
  b = _run(tmp_path / "b", checkpoint_every=0)
  assert (tmp_path / "a" / "checkpoints" / "ppo").is_dir()
  assert not (tmp_path / "b" / "checkpoints").exists()
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert _lines(tmp_path / "a") == _lines(tmp_path / "b")


@pytest.mark.slow
def test_sigterm_inside_an_iteration_checkpoints_and_resumes_exactly(tmp_path, monkeypatch):
  """SIGTERM while iteration 2's rollout is made: the loop finishes that update, checkpoints
  mid-iteration and stops; the re-run trains on the saved rollout and ends identically."""
  import os
  import signal
  from prefjax.train.loop import Preempted
  a = _run(tmp_path / "a")
  calls = []
  judge = stage_lib.judge_metrics

  def judge_then_sigterm(ctx, view):
    calls.append(1)
    if len(calls) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return judge(ctx, view)

  monkeypatch.setattr(stage_lib, "judge_metrics", judge_then_sigterm)
  with pytest.raises(Preempted) as e:
    _run(tmp_path / "b")
  assert e.value.step == 3                           # iteration 2 = steps 3 and 4
  assert (tmp_path / "b" / "rounds" / "ppo" / "round.npz").exists()
  monkeypatch.setattr(stage_lib, "judge_metrics", judge)
  b = _run(tmp_path / "b")
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert _lines(tmp_path / "a") == _lines(tmp_path / "b")


def test_config_errors_are_one_line():
  c = _config()
  stage_lib.check_config(base_config())   # the stage's own defaults are part of base_config
  bad = [
      ({"critic": "none"}, "estimator='gae' needs a critic"),
      ({"advantage.estimator": "grpo"}, "needs config.rl.group_size >= 2"),
      ({"rollout_batch_size": 10}, "not a multiple of config.rl.minibatch_size"),
      ({"kl.placement": "rewards"}, "unknown placement 'rewards'"),
      ({"loss_kwargs.aggregation": "mean"}, "unknown aggregation 'mean'"),
      ({"rewards": {"orcale": 1.0}}, "unknown reward source 'orcale' \\(did you mean oracle"),
      ({"rewards": {"rm": 1.0}}, "reward source 'rm' needs an argument"),
      ({"rewards": {"verifier": "x"}}, "the weight must be a number"),
      ({"reward_kwargs": {"length_penalty": {"scale": 2.0}}}, "not a source of config.rl.rewards"),
      ({"rewards": {"length_penalty": 1.0}, "reward_kwargs": {"length_penalty": {"scal": 2.0}}},
       "unknown argument 'scal'; valid: scale"),
      ({"advantage.kwargs": {"lam": 0.9}, "advantage.estimator": "rloo", "group_size": 2},
       "estimator 'rloo' takes no 'lam'"),
  ]
  for change, match in bad:
    r = ml_collections.ConfigDict(c.rl.to_dict())
    for k, v in change.items():
      node = r
      *path, last = k.split(".")
      for p in path:
        node = node[p]
      node[last] = v
    with pytest.raises(ConfigError, match=match):
      stage_lib.validate(r)


def test_critic_with_a_mismatched_backbone_is_one_line():
  ac = ActorCritic(CFG, nnx.Rngs(0), critic="separate")
  params = nnx.to_pure_dict(nnx.state(ac))
  other = make_config(None, vocab_size=100, overrides=dict(
      dim=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64, max_len=32))
  wrong = nnx.to_pure_dict(nnx.state(Transformer(other, nnx.Rngs(0))))
  with pytest.raises(ConfigError, match=r"backbone parameter \['embed'\] has shape \(100, 32\)"):
    with_critic_backbone(params, wrong)


def _grpo_run(workdir, estimator="grpo", aggregation="seq_mean", **rl):
  """(start params, final params) of a GRPO-style run: groups of 4 per prompt, no critic,
  KL in the loss, the sampler's log-probs as the behaviour policy's; ``rl``: overrides."""
  c = _config()
  r = c.rl
  r.critic, r.group_size, r.advantage.estimator = "none", 4, estimator
  r.iterations, r.rollout_batch_size, r.minibatch_size = 2, 8, 8
  r.kl.placement, r.kl.estimator, r.kl.adaptive = "loss", "k3", False
  r.loss_kwargs.vf_coef, r.loss_kwargs.aggregation = 0.0, aggregation
  r.old_logps = "sampler"
  r.rewards = {"length_penalty": 1.0}                 # varied scores within each group
  r.update(rl)
  model = Transformer(CFG, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)
  params["embed"] = params["embed"] * 0.05
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  ctx = RunContext(config=c, graphdef=graphdef, model_cfg=CFG, tokenizer=TOK, mesh=mesh,
                   param_shardings=sharding.param_shardings(model, mesh), workdir=str(workdir),
                   writer=MetricsWriter(str(workdir), tensorboard=False), data=DataSource(c, TOK))
  return params, stage_lib.run_rl_stage(ctx, r, params, jax.tree.map(np.copy, params))


@pytest.mark.parametrize("estimator,aggregation", [("grpo", "seq_mean"), ("dr_grpo", "seq_sum"),
                                                   ("rloo", "token_mean")])
def test_critic_free_estimators_train_through_the_shared_loop(tmp_path, estimator, aggregation):
  """GRPO-style runs through the shared loop: one metrics line per iteration."""
  params, out = _grpo_run(tmp_path, estimator, aggregation)
  lines = _lines(tmp_path)
  assert [d["rl/iteration"] for d in lines] == [1, 2] and all(np.isfinite(d["loss"]) for d in lines)
  assert "rollout/logprob_mismatch_max" not in lines[0]          # no re-forward with "sampler"
  assert lines[0]["ppo/ratio"] == pytest.approx(1.0, abs=1e-5)   # one update per iteration
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, out))
  assert max(moved) > 0


def test_grouped_updates_train_as_plain_rows_do(tmp_path):
  """One minibatch of every row: the group rows (each prompt once) and the plain rows make
  the same update, so the runs end at the same params and log the same losses."""
  runs = {}
  for mode in ("plain", "grouped"):
    runs[mode] = _grpo_run(tmp_path / mode, update_rows=mode)[1], _lines(tmp_path / mode)
  (plain, plain_lines), (grouped, grouped_lines) = runs["plain"], runs["grouped"]
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(grouped)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
  for a, b in zip(plain_lines, grouped_lines):
    assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
  assert grouped_lines[0]["data/padding_fraction"] < plain_lines[0]["data/padding_fraction"]


def test_grouped_updates_need_whole_groups():
  r = stage_lib.rl_config()
  r.group_size, r.minibatch_size, r.update_rows = 4, 6, "grouped"
  sh = sharding.batch_sharding(sharding.make_mesh(devices=jax.devices()[:1]))
  with pytest.raises(ConfigError, match="minibatch_size=6 is not a multiple of group_size=4"):
    stage_lib.grouped_updates(r, sh)
  r.update_rows = "auto"
  assert not stage_lib.grouped_updates(r, sh)
  r.minibatch_size = 8
  assert stage_lib.grouped_updates(r, sh)
  r.update_rows = "rows"
  with pytest.raises(ConfigError, match="update_rows must be one of auto, grouped, plain"):
    stage_lib.validate(r)


def test_grouped_updates_with_several_minibatches_and_epochs(tmp_path):
  """Two groups of 4 per minibatch, two minibatches and two epochs per iteration."""
  params, out = _grpo_run(tmp_path, iterations=1, rollout_batch_size=16, minibatch_size=8,
                          ppo_epochs=2, update_rows="grouped")
  lines = _lines(tmp_path)
  assert len(lines) == 1 and np.isfinite(lines[0]["loss"])
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, out))
  assert max(moved) > 0
