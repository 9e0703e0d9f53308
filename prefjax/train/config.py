"""Shared config defaults. Experiment files call ``base_config()`` and change what they study.

Every field can be overridden on the command line (``--config.dpo.loss_kwargs.beta=0.05``);
``validate`` turns a bad value into a ``ConfigError`` naming the field.
"""
from __future__ import annotations

import ml_collections

from prefjax.errors import ConfigError
from prefjax.train.sections import train_section  # noqa: F401  (experiments import it here)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = ("sft", "dpo", "eval")

  # The model source: "" = a fresh ``preset``; else a preset name, a Hugging Face
  # directory, a .gguf file, a prefjax checkpoint or a finished workdir (its model/).
  # dtype: compute dtype ("float32" | "bfloat16"; "" = as stored); parameters and
  # optimizer state stay float32.
  # logps_chunk: tokens per chunk of the vocabulary log-softmax (0 = full [B, T, V] logits).
  c.model = ml_collections.ConfigDict(dict(preset="testbed-tiny", init_from="", dtype="",
                                           logps_chunk=0, overrides={}))
  c.model.overrides = ml_collections.ConfigDict()   # any ModelConfig field, e.g. n_layers

  c.testbed = ml_collections.ConfigDict(dict(
      tasks=("sort",), seed=0, sft_error_rate=0.4, proposal_correct_rate=0.5,
      bt_temperature=0.05, label_noise=0.0, group_size=4,
      n_sft=6000, n_pairs=4000, n_eval_pairs=256,
      # Starting point of alignment: "sft" (SFT on these tasks, then align), "base" (align
      # the initial model directly; reference = that model), "other_tasks" (SFT only on
      # ``sft_tasks``, e.g. ("add",), then align on ``tasks``).
      start="sft", sft_tasks=()))

  # The data source (prefjax/train/data_source.py): "testbed" | "testbed:TASK" | a file spec
  # (hh:PATH, jsonl:PATH, sft:PATH, groups:PATH, unpaired:PATH, alpaca_eval_groups:GLOB,
  # hf:PATH for a Hugging Face datasets folder or parquet / JSON files in TRL's formats...).
  # sft / eval: "" = derived from train (chosen responses; a seeded held-out fraction).
  # completion: what to do with a completion longer than max_len (truncate keeps its start,
  # drop skips the row, error stops); rows that cannot be used are counted, never fatal.
  c.data = ml_collections.ConfigDict(dict(
      train="testbed", sft="", eval="", max_len=32, truncate="prompt_left",
      completion="truncate", n_train=0, n_eval=0, eval_fraction=0.1, group_size=4,
      shuffle=True, layout="plain", rows=0, row_len=0, bucket=True, bucket_per_octave=4))
  # layout: "plain" (one row per response), "prefix" (one row per example: the prompt once,
  # each response a branch attending to it) or "packed" (prefix-shared units packed into
  # rows; prefjax/data/layout.py). Losses see the same per-example log-probs either way.
  # rows / row_len (packed; 0 = ceil(batch_size / 2) rows of 2 * max_len tokens): a batch
  # takes as many examples (at most batch_size) as fit; fewer rows pad less (on one H200,
  # 6 rows for 16 HH-length pairs: 12% padding instead of 24%, MFU 34% instead of 30%).
  # bucket (prefix / packed rows; plain batches are always cut): each batch's rows are cut to
  # the shortest length of pipeline.bucket_lengths(row_len, per_octave=bucket_per_octave)
  # its examples fit (one compiled step per length used); False: always row_len.
  # bucket_per_octave: 4 (lengths 256, 320, 384, 448, 512, ...: at most a fifth of a row
  # padding) or 2 (256, 384, 512: half the shapes, up to a third padding).
  # Verifiable tasks (data.train = "tasks:NAME[,NAME...]", prefjax/data/tasks.py): training
  # and held-out prompts drawn from reasoning-gym's generators with this seed; options are
  # per-task generator keywords (difficulty knobs), e.g. {"chain_sum": {"max_terms": 2}};
  # answer_format "tag" (<answer>...</answer>) or "line" (a last line "Answer: ...").
  # shots: solved examples of the task before each question, as earlier chat turns (small
  # models follow the answer format only with them).
  c.tasks = ml_collections.ConfigDict(dict(seed=0, n_train=2000, n_eval=200,
                                           answer_format="tag", shots=0))
  c.tasks.options = ml_collections.ConfigDict()
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  # Multi-host (prefjax/distributed.py), on with enabled=True or $PREFJAX_COORDINATOR:
  # empty/0/-1 fields are read from $PREFJAX_COORDINATOR, $PREFJAX_NUM_PROCESSES,
  # $PREFJAX_PROCESS_ID, else left to JAX's auto-detection (TPU pod slices, SLURM).
  c.distributed = ml_collections.ConfigDict(dict(enabled=False, coordinator_address="",
                                                 num_processes=0, process_id=-1))

  # LoRA for the preference stage (rank 0 = off): only adapters train; the base is frozen.
  # quantize "int8" / "int4" holds the frozen base (the targeted projections) quantized in
  # blocks of quant_block input values (prefjax/models/quant.py; ~1.06 / 0.56 bytes per
  # weight at block 64) and dequantizes it one layer at a time; "" keeps it float.
  c.lora = ml_collections.ConfigDict(dict(
      rank=0, alpha=16.0, targets=("q", "k", "v", "o", "gate", "up", "down"), seed=0,
      quantize="", quant_block=64))

  # async_save: a checkpoint write overlaps the next steps (Orbax; writes are atomic).
  c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=2, async_save=False))
  # Ranking accuracy of the policy on n_train training pairs and the held-out pairs, logged
  # during DPO every `every` steps (0: at the checkpoint interval).
  c.ranking = ml_collections.ConfigDict(dict(enabled=True, every=0, n_train=256,
                                             batch_size=64))
  # Held-out preference metrics (accuracy, margins, R, R~, R*) and sampled generations
  # (workdir/generations.jsonl) during the preference stage, every `every` steps.
  c.heldout = ml_collections.ConfigDict(dict(enabled=False, every=0, n_pairs=64,
                                             n_generations=2, max_new_tokens=48,
                                             batch_size=16))
  # Outputs at the end of a run: workdir/model/ always, workdir/export/hf/ when hf=True.
  c.export = ml_collections.ConfigDict(dict(enabled=True, hf=True))
  # Reference log-probs computed once before a preference stage and cached on disk under a
  # key of (reference weights, planned batches, tokenizer, max_len, layout, ...); a later run
  # with the same key never runs the reference (prefjax/train/ref_cache.py). dir "":
  # $PREFJAX_REFERENCE_CACHE, else ~/.cache/prefjax/reference_logps. Real recipes turn it on.
  # release=True: once its log-probs are cached (and the held-out monitor has scored the
  # held-out pairs), the preference stage trains from the reference's own buffers instead of a
  # copy, so the run holds one copy of the weights; the reference is gone afterwards.
  c.reference_cache = ml_collections.ConfigDict(dict(enabled=False, dir="", release=False))
  c.nonfinite = "stop"      # a non-finite loss: "stop", or "skip" the update (and count it)
  c.max_skips_in_a_row = 10   # with nonfinite="skip": stop after this many in a row
  c.log_every = 10
  c.progress = True
  c.tensorboard = True
  # Weights & Biases beside metrics.jsonl and TensorBoard (prefjax/train/wandb_logger.py; the
  # 'wandb' extra): the same scalars, from process 0. mode: "" (wandb's default or
  # $WANDB_MODE), "online", "offline" or "disabled"; name "" = the workdir's name; dir "" =
  # the workdir; entity / group "" = wandb's defaults.
  c.wandb = ml_collections.ConfigDict(dict(enabled=False, project="prefjax", entity="",
                                           name="", dir="", mode="", group="", tags=()))
  # Each registered stage's own section (sft, dpo, reward, eval, rl, online, ...), with the
  # defaults its module declares (``register_stage(..., section=, defaults=)``).
  from prefjax.train import builtin_stages
  for name, section in builtin_stages.section_defaults().items():
    c[name] = section
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks values the type system cannot; raises ConfigError naming the field."""
  from prefjax.train import builtin_stages
  stages = tuple(builtin_stages.STAGES)
  for s in c.stages:
    if s not in stages:
      raise ConfigError(f"config.stages: unknown stage {s!r}; valid stages: {', '.join(stages)}")
  trained = [builtin_stages.STAGES[s].section for s in c.stages]
  for name in dict.fromkeys(n for n in trained if n and n in c and "steps" in c[n]):
    st = c[name]
    for f in ("steps", "batch_size"):
      if st[f] <= 0:
        raise ConfigError(f"config.{name}.{f} must be positive, got {st[f]}")
    if st.lr <= 0:
      raise ConfigError(f"config.{name}.lr must be positive, got {st.lr}")
    if st.opt_state_dtype not in ("", "float32", "bfloat16"):
      raise ConfigError(f"config.{name}.opt_state_dtype must be float32 or bfloat16, got "
                        f"{st.opt_state_dtype!r}")
    if st.accum_steps < 1:
      raise ConfigError(f"config.{name}.accum_steps must be >= 1, got {st.accum_steps}")
    for k, v in dict(st.lr_multipliers or {}).items():
      if not isinstance(v, (int, float)) or v <= 0:
        raise ConfigError(f"config.{name}.lr_multipliers.{k} must be a positive number, got {v!r}")
  if c.model.dtype not in ("", "float32", "bfloat16"):
    raise ConfigError(f"config.model.dtype must be float32 or bfloat16, got {c.model.dtype!r}")
  if c.data.layout not in ("plain", "prefix", "packed"):
    raise ConfigError(f"config.data.layout must be plain, prefix or packed, got "
                      f"{c.data.layout!r}")
  if c.data.completion not in ("truncate", "drop", "error"):
    raise ConfigError(f"config.data.completion must be truncate, drop or error, got "
                      f"{c.data.completion!r}")
  if c.nonfinite not in ("stop", "skip"):
    raise ConfigError(f"config.nonfinite must be stop or skip, got {c.nonfinite!r}")
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
