"""The testbed pipeline: SFT -> preference optimisation from the SFT model -> exact eval.

``run(config, workdir)`` is what ``scripts/train.py`` calls. Each stage checkpoints under
``workdir/checkpoints/<stage>/``; re-running on the same workdir resumes every stage from
its last checkpoint (a finished stage is restored, not retrained), and ends with the same
``summary.json``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from prefjax import losses, sharding
from prefjax.data import pipeline
from prefjax.errors import ConfigError
from prefjax.eval import ranking_monitor, testbed_eval
from prefjax.models import Transformer, make_config
from prefjax.models import lora as lora_lib
from prefjax.testbed import world
from prefjax.testbed.tokenizer import TestbedTokenizer
from prefjax.train import config as config_lib
from prefjax.train.checkpoint import Checkpointer
from prefjax.train.loop import run_stage
from prefjax.train.metrics_writer import MetricsWriter
from prefjax.train.objective import Objective, make_objective
from prefjax.train.optimizer import make_optimizer
from prefjax.train.step import init_state, make_train_step


def world_config(c) -> world.WorldConfig:
  t = c.testbed
  return world.WorldConfig(tasks=tuple(t.tasks), seed=t.seed, sft_error_rate=t.sft_error_rate,
                           proposal_correct_rate=t.proposal_correct_rate,
                           bt_temperature=t.bt_temperature, label_noise=t.label_noise,
                           group_size=t.group_size)


def stage_objective(c):
  """The alignment objective: a registered loss, or ``"combo"`` of ``config.dpo.loss_weights``.

  A combination's parts each take the keys of ``config.dpo.loss_kwargs`` they accept.
  """
  kwargs = c.dpo.loss_kwargs.to_dict()
  if c.dpo.loss != "combo":
    return make_objective(c.dpo.loss, kwargs)
  weights = dict(c.dpo.loss_weights.to_dict())
  try:
    hp = {n: {k: v for k, v in kwargs.items()
              if k in inspect.signature(losses.get_spec(n).fn).parameters} for n in weights}
    spec = losses.make_combined_spec(weights, hp)
  except (ValueError, KeyError) as e:
    raise ConfigError(f"config.dpo.loss_weights: {e}") from None
  return Objective(spec=spec)


def preference_data(c, wcfg, tok, kind: str, n: int, split: str = "train"):
  """(examples, encoder) for a loss kind: pairwise pairs, unpaired (KTO) or groups."""
  max_len, trunc = c.data.max_len, c.data.truncate
  if kind == "pairwise":
    return (world.preference_pairs(wcfg, n, split),
            pipeline.encode_pair(tok, max_len, trunc))
  if kind == "unpaired":
    return (world.unpaired_examples(wcfg, n, split),
            pipeline.encode_unpaired(tok, max_len, trunc))
  if kind == "multi":
    return (world.group_preferences(wcfg, n, split),
            pipeline.encode_group(tok, max_len, wcfg.group_size, trunc))
  raise ConfigError(f"config.dpo.loss: loss kind {kind!r} has no testbed data")


def build_model(c, tokenizer):
  mcfg = make_config(c.model.preset, vocab_size=tokenizer.vocab_size,
                     overrides=c.model.overrides.to_dict())
  model = Transformer(mcfg, nnx.Rngs(c.seed))
  graphdef, state = nnx.split(model)
  return model, graphdef, nnx.to_pure_dict(state)


def train_stage(name, stage_cfg, objective, *, graphdef, params, param_sh, ref_params, examples,
                encode, mesh, workdir, c, writer, on_log=None, compose=None, trainable_sh=None):
  """Optimises ``objective`` from ``params`` through the shared step; returns final params.

  With ``compose`` (LoRA), ``params`` are the adapters (sharded by ``trainable_sh``) and
  ``ref_params`` the frozen base, passed to every step.
  """
  tx, schedule = make_optimizer(stage_cfg.lr, stage_cfg.steps,
                                warmup_steps=stage_cfg.warmup_steps,
                                weight_decay=stage_cfg.weight_decay, b1=stage_cfg.b1,
                                b2=stage_cfg.b2, clip_norm=stage_cfg.clip_norm,
                                final_lr_fraction=stage_cfg.final_lr_fraction)
  pipeline.check_examples(examples, encode)
  batches = pipeline.batched(examples, encode, stage_cfg.batch_size, seed=c.seed,
                             num_steps=stage_cfg.steps)
  state, state_sh = init_state(params, tx, trainable_sh or param_sh)
  batch_sh = sharding.batch_sharding(mesh)
  step = make_train_step(graphdef, objective, tx, schedule, state_shardings=state_sh,
                         batch_sharding=batch_sh, ref_shardings=param_sh, compose=compose)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), every=c.checkpoint.every,
                      keep=c.checkpoint.keep)
  state = run_stage(name, train_step=step, state=state, state_shardings=state_sh,
                    ref_params=ref_params if (objective.needs_reference or compose) else None,
                    batches=batches, batch_sharding=batch_sh, num_steps=stage_cfg.steps,
                    checkpointer=ckpt, writer=writer, log_every=c.log_every, on_log=on_log,
                    progress=c.progress)
  ckpt.close()
  return state["params"]


def _ranking_hook(c, wcfg, tok, graphdef, ref_params, pairs, params_fn=None):
  """Training-time ranking accuracy (``config.ranking``), or None when disabled."""
  rc = c.get("ranking")
  if rc is None or not rc.enabled:
    return None
  return ranking_monitor.make_ranking_hook(
      graphdef, ref_params, tok, train_pairs=pairs[:rc.n_train],
      heldout_pairs=world.preference_pairs(wcfg, c.testbed.n_eval_pairs, split="eval"),
      max_len=c.data.max_len, every=rc.every or c.checkpoint.every, last_step=c.dpo.steps,
      batch_size=rc.batch_size, params_fn=params_fn)


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the configured stages and writes ``workdir/summary.json``; returns the summary."""
  t0 = time.perf_counter()
  config_lib.validate(c)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(c.to_json_best_effort(indent=2))

  # Fail fast on a bad loss name or hyper-parameter, before anything trains.
  objective = stage_objective(c)
  tok = TestbedTokenizer()
  wcfg = world_config(c)
  mesh = sharding.make_mesh(c.mesh.data, c.mesh.fsdp, c.mesh.tensor)
  model, graphdef, params = build_model(c, tok)
  param_sh = sharding.param_shardings(model, mesh)
  writer = MetricsWriter(workdir, tensorboard=c.tensorboard)
  summary = {"num_params": int(sum(x.size for x in jax.tree.leaves(params))),
             "devices": len(jax.devices()), "mesh": dict(mesh.shape)}

  lap = time.perf_counter()

  def clock(name):
    nonlocal lap
    now = time.perf_counter()
    summary[f"seconds/{name}"] = now - lap
    lap = now

  clock("setup")
  sft_params = params
  if "sft" in c.stages and c.testbed.start != "base":   # "base": align the initial model
    sft_world = wcfg
    if c.testbed.start == "other_tasks":
      sft_world = dataclasses.replace(wcfg, tasks=tuple(c.testbed.sft_tasks))
    examples = world.sft_examples(sft_world, c.testbed.n_sft)
    sft_params = train_stage(
        "sft", c.sft, make_objective("sft"), graphdef=graphdef, params=params,
        param_sh=param_sh, ref_params=None, examples=examples,
        encode=pipeline.encode_sft(tok, c.data.max_len, c.data.truncate), mesh=mesh,
        workdir=workdir, c=c, writer=writer)
    clock("sft")
  # The reference is the starting model: its own buffers (the policy's are donated).
  ref_params = jax.tree.map(jnp.copy, sft_params)

  policy_params = ref_params
  if "dpo" in c.stages:
    examples, encode = preference_data(c, wcfg, tok, objective.spec.kind, c.testbed.n_pairs)
    lora_kw, start = {}, jax.tree.map(jnp.copy, ref_params)
    if c.lora.rank > 0:                       # adapters train; ref_params is the frozen base
      lcfg = lora_lib.LoraConfig(rank=c.lora.rank, alpha=c.lora.alpha,
                                 targets=tuple(c.lora.targets))
      start = lora_lib.init_lora(ref_params, lcfg, jax.random.PRNGKey(c.lora.seed))
      lora_kw = dict(compose=lambda lo, base: lora_lib.apply_lora(base, lo, lcfg.scale),
                     trainable_sh=jax.tree.map(
                         lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
                         start))
      summary["lora/num_params"] = lora_lib.num_lora_params(start)
    full = (lambda lo: lora_lib.merge_lora(ref_params, lo, lcfg.scale)) if lora_kw else None
    on_log = (_ranking_hook(c, wcfg, tok, graphdef, ref_params, examples, full)
              if objective.spec.kind == "pairwise" else None)   # ranking needs pairs
    policy_params = train_stage(
        "dpo", c.dpo, objective, graphdef=graphdef, params=start,
        param_sh=param_sh, ref_params=ref_params, examples=examples, encode=encode, mesh=mesh,
        workdir=workdir, c=c, writer=writer, on_log=on_log, **lora_kw)
    if c.lora.rank > 0:
      policy_params = lora_lib.merge_lora(ref_params, policy_params, lcfg.scale)
    clock("dpo")

  if "reward" in c.stages or "eval_reward" in c.stages:
    from prefjax.rewards.training import run_reward_stages   # a RewardModel, not the LM
    summary.update(run_reward_stages(c, workdir, mesh=mesh, writer=writer,
                                     sft_params=sft_params, train_stage=train_stage))
    clock("reward")

  if "eval" in c.stages:
    ev = c.eval
    res, _ = testbed_eval.evaluate_policy(
        graphdef, policy_params, ref_params, tok, world.eval_prompts(wcfg, ev.n_prompts),
        n_samples=ev.n_samples, max_new_tokens=ev.max_new_tokens, max_len=c.data.max_len,
        seed=ev.seed, temperature=ev.temperature)
    summary.update(res)
    heldout = world.preference_pairs(wcfg, c.testbed.n_eval_pairs, split="eval")
    beta = dict(c.dpo.loss_kwargs).get("beta", 1.0)
    summary.update(testbed_eval.implicit_reward_metrics(
        graphdef, policy_params, ref_params, tok, heldout, beta=beta, max_len=c.data.max_len))
    clock("eval")
  writer.close()
  summary["wall_seconds"] = time.perf_counter() - t0
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  return summary
