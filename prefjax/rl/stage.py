"""The RL stage: rollout -> rewards (+ KL) -> advantages -> PPO epochs through THE step.

    policy_params = run_rl_stage(ctx, config.rl, policy_params, ref_params)

``ctx`` carries ``config`` (the whole ConfigDict), ``graphdef`` (the policy Transformer's),
``tokenizer``, ``mesh``, ``param_shardings`` (the policy's), ``workdir`` and ``writer`` (a
``MetricsWriter``). PPO, fine-grained PPO, GRPO, RLOO and REINFORCE++ are this one loop with
different ``config.rl`` values (see ``rl_config`` for every field):

  per iteration i (rollout RNG = fold_in(key(seed), i); prompts drawn with (seed, i)):
    exp = rollout(policy, reference, prompts)                      Experience, rewards [B, T]
    r   = exp.rewards - beta * k(old, ref)       if the KL is placed in the reward
    A, R = advantages[estimator](r, exp.values, mask, group_size)  (+ whitening)
    for epoch in ppo_epochs: for minibatch in shuffle(B):  state = train_step(state, mb)
    beta <- KL controller (fixed or adaptive toward a target)

Reward models a source needs ("sequence_rm", "token_rm") are trained first, as sub-stages
through the same step (kinds "reward" and "token"), from the policy's backbone. Everything
checkpoints under ``workdir/checkpoints/<name>*``: killed and re-run, the stage resumes from
the last saved iteration with the same state, KL coefficient and RNG, so it ends identically.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from prefjax import sharding
from prefjax.errors import ConfigError
from prefjax.losses.ppo import per_token_objective
from prefjax.rl import advantages as adv_lib
from prefjax.rl import kl as kl_lib
from prefjax.rl import rewards as rw
from prefjax.rl.actor_critic import ActorCritic, with_critic_backbone, with_policy
from prefjax.rl.reward_models import reward_sources
from prefjax.rl.rollout import RolloutConfig, rollout
from prefjax.train.checkpoint import Checkpointer
from prefjax.train.loop import NonFiniteLossError
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state, make_train_step


@dataclasses.dataclass
class StageContext:
  """The shape of ``ctx`` that ``run_rl_stage`` reads (any object with these fields works)."""
  config: ml_collections.ConfigDict
  graphdef: nnx.GraphDef
  tokenizer: object
  mesh: jax.sharding.Mesh
  param_shardings: object
  workdir: str
  writer: object
  summary: dict = dataclasses.field(default_factory=dict)


def _sub_stage(steps, batch_size, lr, warmup=10):
  return ml_collections.ConfigDict(dict(
      steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, weight_decay=0.0,
      b1=0.9, b2=0.95, clip_norm=1.0, final_lr_fraction=0.1))


def rl_config() -> ml_collections.ConfigDict:
  """Defaults of the ``rl`` section (PPO with a value head and the oracle as the reward).

  Fields (``config.rl.*``):
    name                 stage name: checkpoints/<name>/, metrics.jsonl "stage", <name>_summary.json
    iterations           rollout + update rounds
    rollout_batch_size   rows sampled per iteration (= prompts x group_size)
    group_size           samples per prompt, consecutive rows (GRPO / RLOO / Dr.GRPO: >= 2)
    n_prompts            size of the training-prompt pool (testbed train split)
    max_new_tokens, temperature, top_p      sampling (stops at the end-of-turn token)
    ppo_epochs, minibatch_size              passes over each rollout, rows per update step
    lr, warmup_steps, weight_decay, b1, b2, clip_norm, final_lr_fraction   AdamW + schedule
                         over iterations * ppo_epochs * rollout_batch_size / minibatch_size
    critic               "shared" (value head on the policy), "separate" (own backbone, from
                         the reward model's), "none" (critic-free estimators)
    advantage.estimator  gae | grpo | dr_grpo | rloo | reinforce_pp (prefjax.rl.advantages)
    advantage.whiten_rewards, advantage.whiten_advantages   over the whole rollout batch
    advantage.kwargs     estimator hyper-parameters (gae: gamma, lam; reinforce_pp: gamma;
                         grpo: eps)
    loss_kwargs          the "ppo" loss: clip_low, clip_high, value_clip, vf_coef,
                         entropy_coef, aggregation (token_mean | seq_mean | seq_sum)
    kl.placement         none | reward | loss | both;  kl.estimator  k1 | k2 | k3
    kl.coef              the (initial) coefficient; kl.adaptive, kl.target, kl.horizon:
                         Ziegler et al.'s controller toward a target KL (nats per sequence)
    rewards              {source: weight}: oracle | sequence_rm | token_rm (summed)
    missing_eos          penalty | mask | none, for completions without the end token;
    missing_eos_penalty  added to their last token's reward under "penalty"
    checkpoint_every     iterations between checkpoints (resume is exact)
    reward_model         sub-stage training the sequence RM (when rewards has sequence_rm
                         and no reward stage ran): steps, batch_size, lr, ..., n_pairs
    token_rm             sub-stage training the token RM: steps, batch_size, lr, ...,
                         n_pairs, n_eval_pairs, label_coef, flaw_threshold
  """
  r = ml_collections.ConfigDict()
  r.name = "ppo"                  # stage name: checkpoints/<name>, metrics.jsonl "stage"
  r.iterations = 40               # rollout + update rounds
  r.rollout_batch_size = 64       # rows per rollout (= prompts x group_size)
  r.group_size = 1                # samples per prompt (GRPO / RLOO: >= 2)
  r.n_prompts = 2000              # training-prompt pool (testbed train split)
  r.max_new_tokens = 16
  r.temperature, r.top_p = 1.0, 1.0
  r.ppo_epochs = 2
  r.minibatch_size = 32
  r.lr, r.warmup_steps, r.weight_decay = 1e-4, 0, 0.0
  r.b1, r.b2, r.clip_norm, r.final_lr_fraction = 0.9, 0.95, 1.0, 1.0
  r.critic = "shared"             # shared | separate | none
  r.advantage = ml_collections.ConfigDict(dict(
      estimator="gae", whiten_rewards=False, whiten_advantages=True,
      kwargs=ml_collections.ConfigDict(dict(gamma=1.0, lam=0.95))))
  r.loss_kwargs = ml_collections.ConfigDict(dict(
      clip_low=0.2, clip_high=0.2, value_clip=0.2, vf_coef=0.1, entropy_coef=0.0,
      aggregation="token_mean"))
  r.kl = ml_collections.ConfigDict(dict(
      placement="reward", estimator="k1", coef=0.05, adaptive=False, target=1.0,
      horizon=10000.0))
  r.rewards = ml_collections.ConfigDict({"oracle": 1.0})   # source name -> weight
  r.missing_eos, r.missing_eos_penalty = "penalty", -1.0
  r.checkpoint_every = 1          # iterations between checkpoints
  r.reward_model = _sub_stage(steps=200, batch_size=32, lr=1e-3)   # for "sequence_rm"
  r.reward_model.n_pairs = 2000
  r.token_rm = _sub_stage(steps=200, batch_size=32, lr=1e-3)       # for "token_rm"
  r.token_rm.n_pairs, r.token_rm.n_eval_pairs = 2000, 256
  r.token_rm.label_coef, r.token_rm.flaw_threshold = 0.0, 0.5
  return r


def validate(r) -> None:
  """One ConfigError naming the first bad ``config.rl`` field."""
  for f in ("iterations", "rollout_batch_size", "group_size", "ppo_epochs", "minibatch_size",
            "max_new_tokens", "n_prompts"):
    if r[f] < 1:
      raise ConfigError(f"config.rl.{f} must be >= 1, got {r[f]}")
  if r.rollout_batch_size % r.group_size:
    raise ConfigError(f"config.rl.rollout_batch_size={r.rollout_batch_size} is not a multiple "
                      f"of config.rl.group_size={r.group_size}")
  if r.rollout_batch_size % r.minibatch_size:
    raise ConfigError(f"config.rl.rollout_batch_size={r.rollout_batch_size} is not a multiple "
                      f"of config.rl.minibatch_size={r.minibatch_size}")
  spec = adv_lib.get_spec(r.advantage.estimator)
  if spec.needs_values and r.critic == "none":
    raise ConfigError(f"config.rl.advantage.estimator={spec.name!r} needs a critic; "
                      f"config.rl.critic is 'none'")
  if spec.grouped and r.group_size < 2:
    raise ConfigError(f"config.rl.advantage.estimator={spec.name!r} needs "
                      f"config.rl.group_size >= 2, got {r.group_size}")
  kl_lib.check_placement(r.kl.placement)
  kl_lib.kl_estimate(jnp.zeros(()), jnp.zeros(()), r.kl.estimator)
  per_token_objective(r.loss_kwargs.aggregation)
  if not dict(r.rewards):
    raise ConfigError("config.rl.rewards must name at least one reward source")
  for name in dict(r.rewards):
    if name not in ("oracle", "sequence_rm", "token_rm"):
      raise ConfigError(f"config.rl.rewards: unknown reward source {name!r}; valid: oracle, "
                        f"sequence_rm, token_rm (rules: prefjax.rl.rewards.make_source)")


# ---------------------------------------------------------------------------------------------
# The loop.

@functools.partial(jax.jit, static_argnames=("estimator", "group_size", "whiten_rewards",
                                             "whiten_advantages", "hparams", "in_reward",
                                             "kl_estimator"))
def _advantages(rewards, old_lp, ref_lp, values, mask, kl_coef, *, estimator, group_size,
                whiten_rewards, whiten_advantages, hparams, in_reward, kl_estimator):
  if in_reward:
    rewards = kl_lib.penalised_rewards(rewards, old_lp, ref_lp, mask, coef=kl_coef,
                                       estimator=kl_estimator)
  adv, ret = adv_lib.compute_advantages(
      estimator, rewards, values, mask, group_size=group_size, whiten_rewards=whiten_rewards,
      whiten_advantages=whiten_advantages, **dict(hparams))
  return rewards, adv, ret


def run_rl_stage(ctx, stage_cfg, policy_params, ref_params):
  """Runs the RL stage configured by ``stage_cfg`` (``config.rl``); returns the policy's
  final Transformer params (the same structure as ``policy_params``)."""
  r, c = stage_cfg, ctx.config
  validate(r)
  summary: dict = {}
  tok = ctx.tokenizer
  rcfg = RolloutConfig(max_len=c.data.max_len, max_new_tokens=r.max_new_tokens,
                       temperature=r.temperature, top_p=r.top_p, eos_id=tok.eos_id,
                       pad_id=tok.pad_id, missing_eos=r.missing_eos,
                       missing_eos_penalty=r.missing_eos_penalty)
  pool = rw.testbed_prompts(c, r.n_prompts)
  pool_ids = [tok.encode_prompt(p) for _, p in pool]
  from prefjax.rl.rollout import check_prompts
  check_prompts(pool_ids, rcfg)        # fail before any training

  sources, critic_backbone = reward_sources(ctx, r, policy_params, summary)
  oracle = rw.make_source("oracle")

  # The actor-critic: the policy LM (+ a value head or a separate critic).
  cfg = nnx.merge(ctx.graphdef, policy_params).cfg
  ac = ActorCritic(cfg, nnx.Rngs(c.seed), critic=r.critic)
  ac_graphdef, ac_state = nnx.split(ac)
  # Own buffers: the step donates its state, and the caller may still hold these params.
  params = with_policy(nnx.to_pure_dict(ac_state), jax.tree.map(jnp.copy, policy_params))
  if r.critic == "separate":
    params = with_critic_backbone(params, critic_backbone or policy_params,
                                  where="config.rl.critic='separate'")
  ac_sh = sharding.param_shardings(ac, ctx.mesh)
  updates_per_iter = r.ppo_epochs * (r.rollout_batch_size // r.minibatch_size)
  tx, schedule = make_optimizer(r.lr, r.iterations * updates_per_iter,
                                warmup_steps=r.warmup_steps, weight_decay=r.weight_decay,
                                b1=r.b1, b2=r.b2, clip_norm=r.clip_norm,
                                final_lr_fraction=r.final_lr_fraction)
  state, state_sh = init_state(params, tx, ac_sh)
  hp = dict(r.loss_kwargs.to_dict(), kl_estimator=r.kl.estimator)
  objective = make_objective("ppo", hp, per_token=per_token_objective(hp["aggregation"]))
  batch_sh = sharding.batch_sharding(ctx.mesh)
  train_step = make_train_step(ac_graphdef, objective, tx, schedule, state_shardings=state_sh,
                               batch_sharding=batch_sh)
  ref_params = jax.device_put(jax.tree.map(jnp.copy, ref_params), ctx.param_shardings)
  controller = kl_lib.KLController(coef=r.kl.coef, adaptive=r.kl.adaptive, target=r.kl.target,
                                   horizon=r.kl.horizon)

  # Resume: the train state and the KL coefficient; everything else is a function of i.
  replicated = NamedSharding(ctx.mesh, P())
  ckpt = Checkpointer(os.path.join(ctx.workdir, "checkpoints", r.name),
                      every=r.checkpoint_every, keep=c.checkpoint.keep)
  start = ckpt.latest_step() or 0
  if start:
    saved = ckpt.restore(start, {"state": state, "kl_coef": jnp.float32(0)},
                         {"state": state_sh, "kl_coef": replicated})
    state, controller.coef = saved["state"], float(saved["kl_coef"])
    print(f"[{r.name}] resuming from iteration {start} ({ckpt.directory})", flush=True)
  ctx.writer.truncate(r.name, start)

  n_prompts = r.rollout_batch_size // r.group_size
  in_reward, in_loss = kl_lib.in_reward(r.kl.placement), kl_lib.in_loss(r.kl.placement)
  adv_kw = dict(estimator=r.advantage.estimator, group_size=r.group_size,
                whiten_rewards=r.advantage.whiten_rewards,
                whiten_advantages=r.advantage.whiten_advantages,
                hparams=tuple(sorted(r.advantage.kwargs.to_dict().items())),
                in_reward=in_reward, kl_estimator=r.kl.estimator)
  for it in range(start, r.iterations):
    t0 = time.perf_counter()
    # ---- rollout
    pick = np.random.default_rng([c.seed, it]).choice(len(pool), n_prompts, replace=False)
    idx = np.repeat(pick, r.group_size)
    exp, metrics, view = rollout(
        (ac_graphdef, state["params"]), (ctx.graphdef, ref_params), [pool_ids[i] for i in idx],
        rng=jax.random.fold_in(jax.random.key(c.seed), it), cfg=rcfg, tokenizer=tok,
        reward_sources=sources, prompt_texts=[pool[i][1] for i in idx],
        tasks=[pool[i][0] for i in idx])
    metrics["rollout/oracle_reward"] = float(np.mean(oracle.fn(view)))
    # ---- rewards with the KL penalty, advantages
    mask = exp.completion_mask * exp.valid[:, None]
    rewards, adv, ret = _advantages(exp.rewards, exp.old_token_logps, exp.ref_token_logps,
                                    exp.values, mask, jnp.float32(controller.coef), **adv_kw)
    seq_kl = (kl_lib.kl_estimate(exp.old_token_logps, exp.ref_token_logps, "k1") * mask).sum(-1)
    observed_kl = float(seq_kl.sum() / jnp.maximum(exp.valid.sum(), 1.0))
    data = dict(exp.rows(), loss_mask=mask, old_token_logps=exp.old_token_logps,
                ref_token_logps=exp.ref_token_logps, old_values=exp.values, advantages=adv,
                returns=ret,
                kl_coefs=jnp.full(exp.valid.shape, controller.coef if in_loss else 0.0,
                                  jnp.float32),
                example_mask=exp.valid, truncated=jnp.zeros_like(exp.valid))
    data = jax.device_get(data)
    # ---- PPO epochs over minibatches, through the shared step
    ppo_m = []
    for epoch in range(r.ppo_epochs):
      perm = np.random.default_rng([c.seed, it, epoch]).permutation(r.rollout_batch_size)
      for s in range(0, r.rollout_batch_size, r.minibatch_size):
        sel = perm[s:s + r.minibatch_size]
        mb = jax.device_put({k: v[sel] for k, v in data.items()}, batch_sh)
        state, m = train_step(state, mb, None)
        ppo_m.append(m)
    ppo_m = jax.device_get(ppo_m)
    loss = float(np.mean([m["loss"] for m in ppo_m]))
    if not np.isfinite(loss):
      raise NonFiniteLossError(f"[{r.name}] loss is {loss} at iteration {it + 1}; stopping "
                               f"(last good checkpoint: {ckpt.latest_step()})")
    coef_used = controller.coef
    # Kept in float32, as checkpointed, so a resumed run continues with the same value.
    controller.coef = float(np.float32(controller.update(observed_kl,
                                                         n_steps=r.rollout_batch_size)))
    values = {k: float(np.mean([m[k] for m in ppo_m])) for k in ppo_m[-1]
              if k not in ("data/tokens",)}
    values.update(metrics)
    values.update({"kl/observed": observed_kl, "kl/coef": coef_used,
                   "reward/with_kl": float((rewards * mask).sum(-1).mean()),
                   "advantages/mean": float((adv * mask).sum() / jnp.maximum(mask.sum(), 1)),
                   "seconds_per_iteration": time.perf_counter() - t0})
    ctx.writer.write(r.name, it + 1, values)
    if ckpt.should_save(it + 1, it + 1 == r.iterations):
      ckpt.save(it + 1, {"state": state,
                         "kl_coef": jax.device_put(jnp.float32(controller.coef), replicated)})
  ckpt.close()
  if summary:
    if isinstance(getattr(ctx, "summary", None), dict):
      ctx.summary.update(summary)
    with open(os.path.join(ctx.workdir, f"{r.name}_summary.json"), "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
  return state["params"]["lm"]


# ---------------------------------------------------------------------------------------------
# The stage as the run sees it (``prefjax.train.stages.register_stage("ppo", ...)``).

def check_config(c) -> None:
  """Raises ConfigError before anything is written when ``config.rl`` is absent or bad."""
  if "rl" not in c:
    raise ConfigError("config.stages has an RL stage but the config has no 'rl' section "
                      "(see experiments/testbed/ppo.py)")
  validate(c.rl)


def rl_stage(ctx, models) -> None:
  """Stage function ``(ctx, models)``: RL from the current policy; reference = that start."""
  if not getattr(getattr(ctx, "data", None), "testbed", True):
    raise ConfigError("the RL stage's prompts and edit pairs come from the testbed for now "
                      "(config.data.train must be 'testbed' or 'testbed:TASK')")
  reference = jax.tree.map(jnp.copy, models.policy)
  models.policy = run_rl_stage(ctx, ctx.config.rl, models.policy, reference)
  models.reference = reference
