"""Shared config defaults. Experiment files call ``base_config()`` and change what they study.

Every field can be overridden on the command line (``--config.dpo.loss_kwargs.beta=0.05``);
``validate`` turns a bad value into a ``ConfigError`` naming the field.
"""
from __future__ import annotations

import ml_collections

from prefjax.errors import ConfigError


def _stage(steps, batch_size, lr, warmup):
  return ml_collections.ConfigDict(dict(
      steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup, weight_decay=0.0,
      b1=0.9, b2=0.95, clip_norm=1.0, final_lr_fraction=0.1))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("sft", "dpo", "eval")

  c.model = ml_collections.ConfigDict(dict(preset="testbed-tiny", overrides={}))
  c.model.overrides = ml_collections.ConfigDict()   # any ModelConfig field, e.g. n_layers

  c.testbed = ml_collections.ConfigDict(dict(
      tasks=("sort",), seed=0, sft_error_rate=0.4, proposal_correct_rate=0.5,
      bt_temperature=0.05, label_noise=0.0, group_size=4,
      n_sft=6000, n_pairs=4000, n_eval_pairs=256,
      # Starting point of alignment: "sft" (SFT on these tasks, then align), "base" (align
      # the initial model directly; reference = that model), "other_tasks" (SFT only on
      # ``sft_tasks``, e.g. ("add",), then align on ``tasks``).
      start="sft", sft_tasks=()))

  c.data = ml_collections.ConfigDict(dict(max_len=32, truncate="prompt_left"))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

  c.sft = _stage(steps=400, batch_size=64, lr=3e-3, warmup=40)
  c.dpo = _stage(steps=150, batch_size=32, lr=3e-4, warmup=10)
  c.dpo.loss = "dpo"
  c.dpo.loss_kwargs = ml_collections.ConfigDict(dict(beta=0.3))  # + any hyper-parameter of the loss
  # loss = "combo": weighted sum of pairwise losses, e.g. {"dpo": 1.0, "sppo_hard": 0.1};
  # each part takes the keys of loss_kwargs it accepts.
  c.dpo.loss_weights = ml_collections.ConfigDict()

  # LoRA for the preference stage (rank 0 = off): only adapters train; the base is frozen.
  c.lora = ml_collections.ConfigDict(dict(
      rank=0, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down"), seed=0))

  c.eval = ml_collections.ConfigDict(dict(
      n_prompts=256, n_samples=2, max_new_tokens=16, temperature=1.0, seed=1234))
  c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=2))
  # Ranking accuracy of the policy on n_train training pairs and the held-out pairs, logged
  # during DPO every `every` steps (0: at the checkpoint interval).
  c.ranking = ml_collections.ConfigDict(dict(enabled=True, every=0, n_train=256,
                                             batch_size=64))
  c.log_every = 10
  c.progress = True
  c.tensorboard = True
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks values the type system cannot; raises ConfigError naming the field."""
  stages = ("sft", "dpo", "eval", "reward", "eval_reward")
  for s in c.stages:
    if s not in stages:
      raise ConfigError(f"config.stages: unknown stage {s!r}; valid stages: {', '.join(stages)}")
  if ("reward" in c.stages or "eval_reward" in c.stages) and "reward" not in c:
    raise ConfigError("config.stages has a reward stage but the config has no 'reward' "
                      "section (see experiments/testbed/reward_model.py)")
  for name in ("sft", "dpo") + (("reward",) if "reward" in c.stages else ()):
    st = c[name]
    for f in ("steps", "batch_size"):
      if st[f] <= 0:
        raise ConfigError(f"config.{name}.{f} must be positive, got {st[f]}")
    if st.lr <= 0:
      raise ConfigError(f"config.{name}.lr must be positive, got {st.lr}")
  if c.data.max_len < 4:
    raise ConfigError(f"config.data.max_len={c.data.max_len} is too small")
  starts = ("sft", "base", "other_tasks")
  if c.testbed.start not in starts:
    raise ConfigError(f"config.testbed.start: unknown starting point {c.testbed.start!r}; "
                      f"valid: {', '.join(starts)}")
  if c.testbed.start == "other_tasks" and not tuple(c.testbed.sft_tasks):
    raise ConfigError("config.testbed.sft_tasks must name at least one task when "
                      "config.testbed.start='other_tasks'")
  if c.testbed.group_size < 1:
    raise ConfigError(f"config.testbed.group_size must be >= 1, got {c.testbed.group_size}")
  if c.dpo.loss == "combo" and not dict(c.dpo.loss_weights):
    raise ConfigError("config.dpo.loss_weights must name at least one loss when "
                      "config.dpo.loss='combo'")
  if not 0.0 <= c.testbed.label_noise < 0.5:
    raise ConfigError(f"config.testbed.label_noise must be in [0, 0.5), got {c.testbed.label_noise}")
