"""The RL stage: rollout -> rewards (+ KL) -> advantages -> PPO epochs through THE step.

    policy_params = run_rl_stage(ctx, config.rl, policy_params, ref_params)

``ctx`` is the run's ``prefjax.train.stages.RunContext`` (config, model, tokenizer, mesh,
data source, workdir, metrics writer). Prompts come from the data source (``testbed``,
``tasks:NAME`` with an exact verifier, ``prompts:FILE``, the prompts of a preference file). PPO, fine-grained PPO, GRPO, RLOO and REINFORCE++ are this one loop with
different ``config.rl`` values (see ``rl_config`` for every field):

  per iteration i (rollout RNG = fold_in(key(seed), i); prompts drawn with (seed, i)):
    exp = rollout(policy, reference, prompts)                      Experience, rewards [B, T]
    r   = exp.rewards - beta * k(old, ref)       if the KL is placed in the reward
    A, R = advantages[estimator](r, exp.values, mask, group_size)  (+ whitening)
    for epoch in ppo_epochs: for minibatch in shuffle(B):  state = train_step(state, mb)
    beta <- KL controller (fixed or adaptive toward a target)

The minibatches of an iteration are one round of ``prefjax.train.rounds.RoundBatches`` fed to
THE training loop (``prefjax.train.loop.run_stage``): SIGTERM checkpoints, the non-finite
policy, resume and logging are the ones every stage has. One metrics line per iteration
(``rl/iteration``) carries the rollout's readouts: rewards per source, the exact judge
(``rollout/verified_accuracy``, ``rollout/format_rate`` on ``tasks:`` prompts; the oracle on
the testbed), the sampler-vs-trainer log-prob mismatch (``rollout/logprob_mismatch_max`` /
``_mean``), and the last update's PPO statistics (``ppo/ratio``, ``ppo/clip_fraction``, ...).

Reward models a source needs ("sequence_rm", "token_rm") are trained first, as sub-stages
through the same step (kinds "reward" and "token"), from the policy's backbone. Everything
checkpoints under ``workdir/checkpoints/<name>*`` (the current round under
``workdir/rounds/<name>``): killed and re-run, the stage resumes with the same state, KL
coefficient and rollout, so it ends identically.
"""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from prefjax import distributed, sharding
from prefjax.errors import ConfigError
from prefjax.eval import testbed_eval   # also registers the "oracle" reward source
from prefjax.losses.ppo import per_token_objective
from prefjax.rl import advantages as adv_lib
from prefjax.rl import kl as kl_lib
from prefjax.rl import reward_models  # noqa: F401  (registers sequence_rm, token_rm)
from prefjax.rl import reward_sources as rw
from prefjax.rl import shared_rows
from prefjax.rl.actor_critic import ActorCritic, with_critic_backbone, with_policy
from prefjax.rl.rollout import (RolloutConfig, check_prompts, fixed_width, rollout,
                                sample_view)
from prefjax.train.sections import train_section
from prefjax.train.loop import run_stage, stage_checkpointer
from prefjax.train.objective import make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.rounds import RoundBatches
from prefjax.train.stages import logps_chunk
from prefjax.train.step import init_state, make_train_step


UPDATE_ROWS = ("auto", "grouped", "plain")
PLAIN_ROWS = ("input_ids", "target_ids", "positions", "segment_ids")


def _batch_shards(batch_sh) -> int:
  """How many devices a batch's leading axis is split over."""
  spec = batch_sh.spec[0] if len(batch_sh.spec) else None
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  return int(np.prod([batch_sh.mesh.shape[a] for a in axes])) if axes else 1


def grouped_updates(r, batch_sh) -> bool:
  """Whether the update minibatches are group rows (``config.rl.update_rows``)."""
  mode = r.get("update_rows", "auto")
  if mode == "plain":
    return False
  groups, rest = divmod(r.minibatch_size, r.group_size)
  shards = _batch_shards(batch_sh)
  why = None
  if r.group_size < 2:
    why = "group_size is 1 (no groups)"
  elif rest:
    why = f"minibatch_size={r.minibatch_size} is not a multiple of group_size={r.group_size}"
  elif groups % shards:
    why = (f"{groups} groups per minibatch do not split over the {shards} data-parallel "
           f"devices")
  if why and mode == "grouped":
    raise ConfigError(f"config.rl.update_rows='grouped': {why}")
  return why is None


def _sub_stage(steps, batch_size, lr, warmup=10):
  return train_section(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup)


def rl_config() -> ml_collections.ConfigDict:
  """Defaults of the ``rl`` section (PPO with a value head and the oracle as the reward).

  Fields (``config.rl.*``):
    name                 stage name: checkpoints/<name>/, metrics.jsonl "stage", <name>_summary.json
    iterations           rollout + update rounds
    rollout_batch_size   rows sampled per iteration (= prompts x group_size)
    group_size           samples per prompt, consecutive rows (GRPO / RLOO / Dr.GRPO: >= 2)
    n_prompts            size of the training-prompt pool (testbed train split)
    max_new_tokens, temperature, top_p, top_k   sampling (stops at the tokenizer's
                         end-of-turn and EOS tokens)
    old_logps            the behaviour policy's log-probs in the PPO ratio: "trainer" (one
                         full forward of the rollout; the sampler-vs-trainer mismatch is
                         logged) or "sampler" (the decode's own; saves that forward; critic-
                         free estimators only)
    ppo_epochs, minibatch_size              passes over each rollout, rows per update step
    update_rows          "auto" | "grouped" | "plain": grouped minibatches hold whole groups
                         and compute each group's prompt once (one prefix-shared row per
                         group, ``prefjax.rl.shared_rows``; the same log-probs as plain rows).
                         Needs group_size > 1 and minibatch_size a multiple of group_size
                         whose groups split evenly over the data-parallel devices; "auto"
                         groups when it can, "grouped" raises when it cannot
    lr, warmup_steps, weight_decay, b1, b2, clip_norm, final_lr_fraction, lr_multipliers
                         AdamW + schedule (lr_multipliers: {top-level group: factor})
                         over iterations * ppo_epochs * rollout_batch_size / minibatch_size
    critic               "shared" (value head on the policy), "separate" (own backbone, from
                         the reward model's), "none" (critic-free estimators)
    advantage.estimator  gae | grpo | dr_grpo | rloo | reinforce_pp (prefjax.rl.advantages)
    advantage.whiten_rewards, advantage.whiten_advantages   over the whole rollout batch
    advantage.kwargs     estimator hyper-parameters, checked against its signature (gae:
                         gamma, lam; reinforce_pp: gamma; grpo: eps); {} = its defaults
    loss_kwargs          the "ppo" loss: clip_low, clip_high, value_clip, vf_coef,
                         entropy_coef, aggregation (token_mean | seq_mean | seq_sum)
    kl.placement         none | reward | loss | both;  kl.estimator  k1 | k2 | k3
    kl.coef              the (initial) coefficient; kl.adaptive, kl.target, kl.horizon:
                         Ziegler et al.'s controller toward a target KL (nats per sequence)
    rewards              {source: weight}, summed: verifier | format | oracle | length_penalty
                         | sequence_rm | token_rm | rm:WORKDIR | calibrated:SOURCE
                         (``prefjax.rl.reward_sources``); reward_kwargs: {source: {kwarg: value}}
    missing_eos          penalty | mask | none, for completions without the end token;
    missing_eos_penalty  added to their last token's reward under "penalty"
    checkpoint_every     iterations between checkpoints (resume is exact); 0 writes none
                         (a short in-memory run that is not resumed, e.g. a study's arm)
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
  r.temperature, r.top_p, r.top_k = 1.0, 1.0, 0
  r.old_logps = "trainer"         # trainer (a full forward; mismatch logged) | sampler
  r.ppo_epochs = 2
  r.minibatch_size = 32
  r.update_rows = "auto"          # auto | grouped (each group's prompt once) | plain
  r.lr, r.warmup_steps, r.weight_decay = 1e-4, 0, 0.0
  r.b1, r.b2, r.clip_norm, r.final_lr_fraction = 0.9, 0.95, 1.0, 1.0
  r.lr_multipliers = ml_collections.ConfigDict()   # e.g. {"value_head": 100.0}
  r.critic = "shared"             # shared | separate | none
  r.advantage = ml_collections.ConfigDict(dict(
      estimator="gae", whiten_rewards=False, whiten_advantages=True,
      kwargs=ml_collections.ConfigDict()))   # the estimator's own defaults (gae: gamma 1, lam 0.95)
  r.loss_kwargs = ml_collections.ConfigDict(dict(
      clip_low=0.2, clip_high=0.2, value_clip=0.2, vf_coef=0.1, entropy_coef=0.0,
      aggregation="token_mean"))
  r.kl = ml_collections.ConfigDict(dict(
      placement="reward", estimator="k1", coef=0.05, adaptive=False, target=1.0,
      horizon=10000.0))
  r.rewards = ml_collections.ConfigDict({"oracle": 1.0})   # source name -> weight
  r.reward_kwargs = ml_collections.ConfigDict()            # source name -> its kwargs
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
  if r.old_logps not in ("trainer", "sampler"):
    raise ConfigError(f"config.rl.old_logps must be trainer or sampler, got {r.old_logps!r}")
  if r.get("update_rows", "auto") not in UPDATE_ROWS:
    raise ConfigError(f"config.rl.update_rows must be one of {', '.join(UPDATE_ROWS)}, got "
                      f"{r.update_rows!r}")
  kl_lib.check_placement(r.kl.placement)
  kl_lib.kl_estimate(jnp.zeros(()), jnp.zeros(()), r.kl.estimator)
  per_token_objective(r.loss_kwargs.aggregation)
  adv_lib.check_kwargs(spec.name, r.advantage.kwargs.to_dict())
  rw.check_sources(dict(r.rewards), r.reward_kwargs.to_dict())


# ---------------------------------------------------------------------------------------------
# The stage: rollouts feed THE training loop (prefjax.train.loop) round by round.

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


def rollout_config(c, r, tok) -> RolloutConfig:
  """Sampling settings of ``config.rl`` for the run's tokenizer (its stop ids)."""
  return RolloutConfig.for_tokenizer(
      tok, max_len=c.data.max_len, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
      top_p=r.top_p, top_k=r.top_k, missing_eos=r.missing_eos,
      missing_eos_penalty=r.missing_eos_penalty, logps_chunk=logps_chunk(c),
      old_logps=r.old_logps)


def judge_metrics(ctx, view) -> dict:
  """Exact-judge readouts of a rollout, whatever reward trains it: the testbed oracle's
  mean, or the verifier's accuracy and format rate on ``tasks:`` prompts."""
  if getattr(ctx.data, "testbed", False):
    return {"rollout/oracle_reward": float(np.mean(testbed_eval.oracle_source().fn(view)))}
  ts = getattr(ctx.data, "taskset", None)
  if ts is None:
    return {}
  scores = rw.task_scores(view, ts)
  return {"rollout/verified_accuracy": float(np.mean([s.correct for s in scores])),
          "rollout/format_rate": float(np.mean([s.formatted for s in scores])),
          "rollout/lenient_accuracy": float(np.mean([s.lenient for s in scores]))}


class _KLHistory:
  """The KL coefficient of every iteration (``kl.json`` beside the rounds): an adaptive
  controller's value at iteration i is read back on resume instead of replayed."""

  def __init__(self, directory, r):
    self.path, self.r = os.path.join(directory, "kl.json"), r
    self.coefs = [float(r.kl.coef)]
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.coefs = json.load(f)["coefs"]

  def coef(self, it: int) -> float:
    if it >= len(self.coefs):
      raise RuntimeError(f"no KL coefficient recorded for iteration {it} ({self.path})")
    return self.coefs[it]

  def record(self, it: int, observed_kl: float, n_steps: int) -> None:
    r = self.r
    ctl = kl_lib.KLController(coef=self.coefs[it], adaptive=r.kl.adaptive, target=r.kl.target,
                              horizon=r.kl.horizon)
    # float32, as every other state, so a resumed run continues with the same value
    self.coefs = self.coefs[:it + 1] + [float(np.float32(ctl.update(observed_kl, n_steps)))]
    if distributed.is_main():
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      with open(self.path + ".tmp", "w") as f:
        json.dump({"coefs": self.coefs}, f)
      os.replace(self.path + ".tmp", self.path)


def run_rl_stage(ctx, stage_cfg, policy_params, ref_params):
  """Runs the RL stage configured by ``stage_cfg`` (``config.rl``); returns the policy's
  final Transformer params (the same structure as ``policy_params``)."""
  r, c = stage_cfg, ctx.config
  validate(r)
  summary: dict = {}
  tok = ctx.tokenizer
  rcfg = rollout_config(c, r, tok)
  pool = ctx.data.prompts("train", r.n_prompts)
  pool_ids = [tok.encode_prompt(x.prompt) for x in pool]
  check_prompts(pool_ids, rcfg)        # fail before any training
  rcfg = fixed_width(pool_ids, rcfg)   # one compiled shape for sampling, scoring and updates
  if len(pool) < r.rollout_batch_size // r.group_size:
    raise ConfigError(f"config.rl.rollout_batch_size / group_size = "
                      f"{r.rollout_batch_size // r.group_size} prompts per iteration, but the "
                      f"data source has {len(pool)} training prompts")
  ref_params = jax.device_put(ref_params, ctx.param_shardings)   # read only: no copy

  def reference_sample(n):             # for calibrated reward sources
    idx = np.random.default_rng([c.seed, 7]).choice(len(pool), min(n, len(pool)), replace=False)
    return sample_view((ctx.graphdef, ref_params), [pool[i] for i in idx],
                       [pool_ids[i] for i in idx], rng=jax.random.key(c.seed + 7), cfg=rcfg,
                       tokenizer=tok)

  env = rw.SourceEnv(ctx=ctx, policy_params=policy_params, summary=summary,
                     reference_sample=reference_sample)
  sources = rw.build_sources(env, dict(r.rewards), r.reward_kwargs.to_dict())

  # The actor-critic: the policy LM (+ a value head or a separate critic).
  cfg = nnx.merge(ctx.graphdef, policy_params).cfg
  ac = ActorCritic(cfg, nnx.Rngs(c.seed), critic=r.critic)
  ac_graphdef, ac_state = nnx.split(ac)
  # Own buffers: the step donates its state, and the caller may still hold these params.
  params = with_policy(nnx.to_pure_dict(ac_state), jax.tree.map(jnp.copy, policy_params))
  if r.critic == "separate":
    params = with_critic_backbone(params, env.critic_backbone or policy_params,
                                  where="config.rl.critic='separate'")
  ac_sh = sharding.param_shardings(ac, ctx.mesh)
  per_epoch = r.rollout_batch_size // r.minibatch_size
  steps_per_round = r.ppo_epochs * per_epoch
  tx, schedule = make_optimizer(r.lr, r.iterations * steps_per_round,
                                warmup_steps=r.warmup_steps, weight_decay=r.weight_decay,
                                b1=r.b1, b2=r.b2, clip_norm=r.clip_norm,
                                final_lr_fraction=r.final_lr_fraction,
                                lr_multipliers=dict(r.lr_multipliers or {}))
  state, state_sh = init_state(params, tx, ac_sh)
  hp = dict(r.loss_kwargs.to_dict(), kl_estimator=r.kl.estimator)
  chunk = logps_chunk(c) if not hp.get("entropy_coef") else None
  objective = make_objective("ppo", hp, per_token=per_token_objective(hp["aggregation"]),
                             logps_chunk=chunk)
  batch_sh = sharding.batch_sharding(ctx.mesh)
  train_step = make_train_step(ac_graphdef, objective, tx, schedule, state_shardings=state_sh,
                               batch_sharding=batch_sh,
                               skip_nonfinite=c.nonfinite == "skip")

  rounds_dir = os.path.join(ctx.workdir, "rounds", r.name)
  kl_hist = _KLHistory(rounds_dir, r)
  n_prompts = r.rollout_batch_size // r.group_size
  grouped = grouped_updates(r, batch_sh)
  group_len = shared_rows.max_row_len(rcfg.prompt_len or rcfg.prompt_width, r.group_size,
                                      r.max_new_tokens)
  in_reward, in_loss = kl_lib.in_reward(r.kl.placement), kl_lib.in_loss(r.kl.placement)
  adv_kw = dict(estimator=r.advantage.estimator, group_size=r.group_size,
                whiten_rewards=r.advantage.whiten_rewards,
                whiten_advantages=r.advantage.whiten_advantages,
                hparams=tuple(sorted(r.advantage.kwargs.to_dict().items())),
                in_reward=in_reward, kl_estimator=r.kl.estimator)

  def build(it, state):
    """Iteration ``it``'s rollout from the current policy -> its PPO minibatches."""
    t0 = time.perf_counter()
    pick = np.random.default_rng([c.seed, it]).choice(len(pool), n_prompts, replace=False)
    idx = np.repeat(pick, r.group_size)
    exp, metrics, view = rollout(
        (ac_graphdef, state["params"]), (ctx.graphdef, ref_params), [pool_ids[i] for i in idx],
        rng=jax.random.fold_in(jax.random.key(c.seed), it), cfg=rcfg, tokenizer=tok,
        reward_sources=sources, items=[pool[i] for i in idx])
    metrics.update(judge_metrics(ctx, view))
    coef = kl_hist.coef(it)
    mask = exp.completion_mask * exp.valid[:, None]
    rewards, adv, ret = _advantages(exp.rewards, exp.old_token_logps, exp.ref_token_logps,
                                    exp.values, mask, jnp.float32(coef), **adv_kw)
    seq_kl = (kl_lib.kl_estimate(exp.old_token_logps, exp.ref_token_logps, "k1") * mask).sum(-1)
    observed_kl = float(seq_kl.sum() / jnp.maximum(exp.valid.sum(), 1.0))
    kl_hist.record(it, observed_kl, n_steps=r.rollout_batch_size)
    data = jax.device_get(dict(
        exp.rows(), loss_mask=mask, old_token_logps=exp.old_token_logps,
        ref_token_logps=exp.ref_token_logps, old_values=exp.values, advantages=adv,
        returns=ret, kl_coefs=jnp.full(exp.valid.shape, coef if in_loss else 0.0, jnp.float32),
        example_mask=exp.valid, truncated=jnp.zeros_like(exp.valid)))
    batches = []
    if grouped:                  # whole groups, each group's prompt once
      completions = np.asarray(exp.completion_mask)
      per_batch = r.minibatch_size // r.group_size
      for epoch in range(r.ppo_epochs):
        perm = np.random.default_rng([c.seed, it, epoch]).permutation(n_prompts)
        for s in range(0, n_prompts, per_batch):
          sel = (perm[s:s + per_batch, None] * r.group_size
                 + np.arange(r.group_size)).reshape(-1)
          b = {k: v[sel] for k, v in data.items() if k not in PLAIN_ROWS}
          b.update(shared_rows.group_rows(data["input_ids"][sel], data["target_ids"][sel],
                                          completions[sel], r.group_size, max_len=group_len))
          batches.append(b)
    else:
      for epoch in range(r.ppo_epochs):
        perm = np.random.default_rng([c.seed, it, epoch]).permutation(r.rollout_batch_size)
        for s in range(0, r.rollout_batch_size, r.minibatch_size):
          sel = perm[s:s + r.minibatch_size]
          batches.append({k: v[sel] for k, v in data.items()})
    mask_np = np.asarray(mask)
    metrics.update({
        "rl/iteration": it + 1, "kl/observed": observed_kl, "kl/coef": coef,
        "reward/with_kl": float((np.asarray(rewards) * mask_np).sum(-1).mean()),
        "advantages/mean": float((np.asarray(adv) * mask_np).sum() / max(mask_np.sum(), 1)),
        "seconds_per_rollout": time.perf_counter() - t0})
    return batches, metrics

  src = RoundBatches(build, steps_per_round, rounds_dir)
  ckpt = stage_checkpointer(os.path.join(ctx.workdir, "checkpoints", r.name),
                            every=steps_per_round * r.checkpoint_every, keep=c.checkpoint.keep)
  state = run_stage(r.name, train_step=train_step, state=state, state_shardings=state_sh,
                    ref_params=None, batches=src, batch_sharding=batch_sh,
                    num_steps=r.iterations * steps_per_round, checkpointer=ckpt,
                    writer=ctx.writer, log_every=steps_per_round, on_log=src.on_log,
                    progress=c.progress, nonfinite=c.nonfinite,
                    max_skips_in_a_row=c.max_skips_in_a_row)
  ckpt.close()
  if summary:
    if isinstance(getattr(ctx, "summary", None), dict):
      ctx.summary.update(summary)
    if distributed.is_main():
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
  reference = models.policy       # read only (the step donates its own copy): no 2nd copy
  models.policy = run_rl_stage(ctx, ctx.config.rl, models.policy, reference)
  models.reference = reference
