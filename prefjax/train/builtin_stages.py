"""The built-in stages: sft, dpo (any registered loss), reward, eval_reward, eval.

Each is ``fn(ctx, models)``: it reads ``ctx`` (config, model, data, outputs) and updates
``models`` (the current policy, its reference). Registered in ``prefjax.train.stages``.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections

from prefjax import distributed, hostmem
from prefjax.errors import ConfigError, DataError
from prefjax.eval import heldout, judge, ranking_monitor, testbed_eval
from prefjax.models import lora as lora_lib
from prefjax.models import quant
from prefjax.rewards import training
from prefjax.rl import online as online_lib
from prefjax.rl import reward_sources as rw
from prefjax.rl import stage as rl_stage_lib
from prefjax.train import outputs
from prefjax.train.objective import make_objective
from prefjax.train.sections import train_section
from prefjax.train.stages import (STAGES, Lora, RunContext, accum, copy_params,  # noqa: F401
                                  logps_chunk, preference_objective, register_stage,
                                  section_defaults, train_stage)


@dataclasses.dataclass
class Models:
  """The params a run carries between stages (pure dicts)."""
  policy: dict                      # the current model (after the last training stage)
  reference: dict | None = None     # what the policy is compared against (the DPO start)
  sft: dict | None = None           # the SFT output, when there was an SFT stage


def _beta(c) -> float:
  return float(dict(c.dpo.loss_kwargs).get("beta", 1.0))


def _skips_sft(ctx) -> bool:
  """The testbed's ``start="base"`` aligns the initial model directly."""
  return ctx.data.testbed and ctx.config.testbed.start == "base"


# ----------------------------------------------------------------------------- sft
def sft_section():
  return train_section(steps=400, batch_size=64, lr=3e-3, warmup=40)


@register_stage("sft", section="sft", defaults=sft_section)
def sft(ctx: RunContext, models: Models) -> None:
  if _skips_sft(ctx):
    return
  c = ctx.config
  params = train_stage(ctx, "sft", c.sft, make_objective("sft", logps_chunk=logps_chunk(c)),
                       params=copy_params(models.policy), examples=ctx.data.examples("sft"),
                       encode=ctx.data.encoder("sft", batch_size=c.sft.batch_size * accum(c.sft)))
  models.policy = models.sft = params


# ----------------------------------------------------------------------------- dpo
def dpo_section():
  """loss: any registered loss name, or "combo": a weighted sum of pairwise losses
  (``loss_weights``, e.g. {"dpo": 1.0, "sppo_hard": 0.1}; each part takes the keys of
  ``loss_kwargs`` it accepts)."""
  d = train_section(steps=150, batch_size=32, lr=3e-4, warmup=10)
  d.loss = "dpo"
  d.loss_kwargs = ml_collections.ConfigDict(dict(beta=0.3))  # + any hyper-parameter of the loss
  d.loss_weights = ml_collections.ConfigDict()
  return d


def _check_dpo(c):
  preference_objective(c.dpo)
  Lora.from_config(c)


def _eval_pairs(ctx) -> list:
  """Held-out pairs, or [] when the data holds none (unpaired rows, SFT files)."""
  try:
    return ctx.data.eval_pairs()
  except DataError as e:
    ctx.summary.setdefault("notes", []).append(f"no held-out pairs: {e}")
    return []


def _monitors(ctx: RunContext, reference, examples, kind, params_fn):
  """Training-time hooks: ranking accuracy (testbed) and held-out preference metrics."""
  c, hooks = ctx.config, []
  rc = c.get("ranking")
  if rc is not None and rc.enabled and kind == "pairwise" and ctx.data.testbed:
    hooks.append(ranking_monitor.make_ranking_hook(
        ctx.graphdef, reference, ctx.tokenizer, train_pairs=examples[:rc.n_train],
        heldout_pairs=ctx.data.eval_pairs(), max_len=c.data.max_len,
        every=rc.every or c.checkpoint.every, last_step=c.dpo.steps, batch_size=rc.batch_size,
        params_fn=params_fn))
  hc = c.get("heldout")
  pairs = _eval_pairs(ctx) if hc is not None and hc.enabled else []
  if pairs:
    pairs = pairs[:hc.n_pairs]
    mon = ctx.monitor = heldout.HeldoutMonitor(ctx.graphdef, reference, ctx.tokenizer, pairs,
                                               beta=_beta(c), max_len=c.data.max_len,
                                               batch_size=hc.batch_size)
    prompts = [p.get("chat") or p["prompt"] for p in pairs[:hc.n_generations]]
    hooks.append(heldout.make_hook(mon, every=hc.every or c.checkpoint.every,
                                   last_step=c.dpo.steps, stage="dpo", workdir=ctx.workdir,
                                   params_fn=params_fn, generation_prompts=prompts,
                                   max_new_tokens=hc.max_new_tokens))
  if not hooks:
    return None

  def on_log(state, step):
    out = {}
    for h in hooks:
      out.update(h(state, step))
    return out

  return on_log


@register_stage("dpo", check=_check_dpo, section="dpo", defaults=dpo_section)
def dpo(ctx: RunContext, models: Models) -> None:
  """Any registered preference loss from the current policy; reference = that start."""
  c = ctx.config
  objective = preference_objective(c.dpo, c)
  kind = objective.spec.kind
  lora = Lora.from_config(c)
  if c.reference_cache.get("release", False):
    _check_release(ctx, lora)
  if lora and lora.quant_bits:    # the quantized base replaces the float one (not kept)
    models.policy = lora.base(models.policy, ctx.param_shardings)
    hostmem.trim()                # hand the float base's pages back to the OS
  if lora:      # the frozen base as held: every leaf, and bytes per projection weight
    ctx.summary["lora/base_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(models.policy)))
    ctx.summary["lora/base_bytes_per_param"] = quant.bytes_per_param(models.policy)
  reference = models.policy       # read only (the step donates ``start``, a copy): no 2nd copy
  examples = ctx.data.examples(kind)
  start = lora.init(reference, c.lora.seed) if lora else None   # None: from the reference
  params_fn = (lambda a: lora.merge(reference, a)) if lora else None
  if lora:
    ctx.summary["lora/num_params"] = lora_lib.num_lora_params(start)
  trained = train_stage(ctx, "dpo", c.dpo, objective, params=start, examples=examples,
                        encode=ctx.data.encoder(kind, batch_size=c.dpo.batch_size * accum(c.dpo)),
                        reference=reference, lora=lora,
                        on_log=_monitors(ctx, reference, examples, kind, params_fn))
  models.policy = lora.merge(reference, trained) if lora else trained
  released = ctx.summary.get("reference_cache/dpo/released", False)
  models.reference = None if released else reference
  if released:
    models.sft = None               # the same buffers, given to the policy


def _check_release(ctx: RunContext, lora) -> None:
  """``reference_cache.release`` drops the reference's weights after the log-probs are cached:
  refuse up front (before any training) what would need them later."""
  c = ctx.config
  why = None
  stages = list(c.stages)
  later = stages[stages.index("dpo") + 1:] if "dpo" in stages else []
  if not c.reference_cache.enabled:
    why = "it needs config.reference_cache.enabled=True"
  elif lora is not None:
    why = "LoRA keeps the frozen base (the reference) anyway"
  elif ctx.data.testbed and c.get("ranking") is not None and c.ranking.enabled:
    why = "the ranking monitor (config.ranking.enabled) scores against the reference weights"
  elif "eval" in later and (ctx.data.testbed or ctx.data.samples_prompts_only):
    why = "the eval stage samples from the reference"
  elif "eval" in later and _eval_pairs(ctx) and not (
      c.heldout.enabled and c.heldout.n_pairs >= len(_eval_pairs(ctx))):
    why = ("the eval stage scores every held-out pair against the reference: set "
           "config.heldout.enabled=True with heldout.n_pairs >= the held-out pairs "
           "so their reference scores are computed before training")
  elif any(s != "eval" for s in later):
    why = f"stage(s) {', '.join(s for s in later if s != 'eval')} after dpo may need it"
  if why:
    raise ConfigError(f"config.reference_cache.release=True: {why}")


# ----------------------------------------------------------------------------- reward
def _check_reward(c):
  make_objective(c.reward.loss, c.reward.loss_kwargs.to_dict())


@register_stage("reward", check=_check_reward, section="reward",
                defaults=training.reward_config)
def reward(ctx: RunContext, models: Models) -> None:
  ctx.summary.update(training.train_reward_model(ctx, models.policy))


@register_stage("eval_reward", check=_check_reward, section="reward",
                defaults=training.reward_config)
def eval_reward(ctx: RunContext, models: Models) -> None:
  ctx.summary.update(training.evaluate_reward_model(ctx))


# ----------------------------------------------------------------------------- eval
def eval_section():
  """The judge at the end of a run: held-out prompts sampled from the policy and the
  reference. reward: the reward source that scores them ("" = the testbed oracle, or the
  verifier of tasks: data); temperature 0 = greedy."""
  return ml_collections.ConfigDict(dict(
      n_prompts=256, n_samples=2, max_new_tokens=16, temperature=1.0, top_p=1.0, seed=1234,
      reward="", batch_size=32))


@register_stage("eval", section="eval", defaults=eval_section)
def evaluate(ctx: RunContext, models: Models) -> None:
  """The testbed's oracle judge, or held-out preference metrics on real data."""
  c = ctx.config
  released = ctx.summary.get("reference_cache/dpo/released", False)
  reference = models.reference if models.reference is not None else models.policy
  if ctx.data.testbed:
    ev = c.eval
    prompts = [(p.task, p.prompt) for p in ctx.data.prompts("eval", ev.n_prompts)]
    res, _ = testbed_eval.evaluate_policy(
        ctx.graphdef, models.policy, reference, ctx.tokenizer, prompts, n_samples=ev.n_samples,
        max_new_tokens=ev.max_new_tokens, max_len=c.data.max_len, seed=ev.seed,
        temperature=ev.temperature)
    ctx.summary.update(res)
    ctx.summary.update(testbed_eval.implicit_reward_metrics(
        ctx.graphdef, models.policy, reference, ctx.tokenizer, ctx.data.eval_pairs(),
        beta=_beta(c), max_len=c.data.max_len))
    return
  if ctx.data.samples_prompts_only:
    judge_policy(ctx, models.policy, reference)
    return
  pairs = _eval_pairs(ctx)
  if not pairs:
    return
  mon = ctx.monitor     # the training monitor's reference scores, when it scored these pairs
  if released and (mon is None or len(mon.source_pairs) != len(pairs)):
    raise ConfigError("config.reference_cache.release=True dropped the reference weights, and "
                      "the held-out monitor did not score these held-out pairs before training")
  if mon is None or len(mon.source_pairs) != len(pairs):
    mon = heldout.HeldoutMonitor(ctx.graphdef, reference, ctx.tokenizer, pairs,
                                 beta=_beta(c), max_len=c.data.max_len,
                                 batch_size=c.heldout.batch_size if "heldout" in c else 16)
  ctx.summary.update({f"eval/{k}": v for k, v in mon.metrics(models.policy).items()})
  if mon.dropped:
    ctx.summary["eval/dropped_pairs"] = len(mon.dropped)


def judge_policy(ctx: RunContext, policy, reference) -> dict:
  """Held-out prompts sampled from the policy and the reference, scored by
  ``config.eval.reward`` ("" = the verifier of ``tasks:`` data): ``eval/*`` in the summary,
  every sample in ``workdir/generations.jsonl``."""
  c, ev = ctx.config, ctx.config.eval
  name = ev.reward or ("verifier" if ctx.data.taskset is not None else "")
  if not name:
    raise ConfigError("config.eval.reward must name a reward source to judge samples of "
                      f"{ctx.data.train_spec} (e.g. 'rm:WORKDIR')")
  source = rw.make_source(name, rw.SourceEnv(ctx=ctx, policy_params=reference))
  settings = judge.JudgeSettings(
      n_samples=ev.n_samples, max_new_tokens=ev.max_new_tokens, temperature=ev.temperature,
      top_p=ev.top_p, seed=ev.seed, max_len=c.data.max_len,
      batch_size=ev.batch_size, logps_chunk=logps_chunk(c))
  metrics, rows = judge.judge((ctx.graphdef, policy), (ctx.graphdef, reference), ctx.tokenizer,
                              ctx.data.prompts("eval", ev.n_prompts), source=source,
                              taskset=ctx.data.taskset, settings=settings)
  ctx.summary.update({f"eval/{k}": v for k, v in metrics.items()})
  if distributed.is_main():
    judge.write_generations(os.path.join(ctx.workdir, "generations.jsonl"), rows)
  print(judge.headline(metrics), flush=True)
  return metrics


# ----------------------------------------------------------------------------- outputs
def write_outputs(ctx: RunContext, models: Models) -> None:
  """``workdir/model/`` (prefjax checkpoint + tokenizer) and ``workdir/export/hf/``."""
  out = outputs.write_run_outputs(ctx.workdir, ctx.model_cfg, models.policy, ctx.tokenizer,
                                 hf=ctx.config.get("export") is None or ctx.config.export.hf)
  ctx.summary.update(out)


# ----------------------------------------------------------------------------- rl
def _check_rl(c):
  rl_stage_lib.check_config(c)


@register_stage("ppo", check=_check_rl, section="rl", defaults=rl_stage_lib.rl_config)
def ppo(ctx: RunContext, models: Models) -> None:
  """PPO / fine-grained PPO / GRPO / RLOO / REINFORCE++ (``config.rl``; prefjax.rl.stage)."""
  rl_stage_lib.rl_stage(ctx, models)


def _check_online(c):
  online_lib.check_config(c)


@register_stage("online", check=_check_online, section="online",
                defaults=online_lib.online_config)
def online(ctx: RunContext, models: Models) -> None:
  """Online / iterative preference optimisation with any registered loss (prefjax.rl.online)."""
  online_lib.online_stage(ctx, models)
