"""Shared defaults of the real-model recipes (experiments/real/): SmolLM2-135M-Instruct on
HH-RLHF, sized for a CPU.

Each recipe's ``get_config(arg)`` takes comma-separated options:
  quick      a CPU smoke run of a few minutes (tiny step counts, short rows)
  LOSS       any registered loss name (``prefjax.losses.names()``): dpo, ipo, simpo, kto, ...
"""
import ml_collections

from prefjax import assets, losses
from prefjax.train.config import base_config

HH = "hh-rlhf/harmless-base_test.jsonl.gz"


def real_config(stages=("sft", "dpo", "eval")):
  c = base_config()
  c.stages = stages
  c.model.init_from = assets.smollm2_gguf(required=False) or "SmolLM2-135M-Instruct.Q4_1.gguf"
  c.data.train = "hh:" + assets.shared_data(HH)
  c.data.max_len = 256
  c.data.completion = "truncate"
  c.data.n_eval = 300                  # held out by prompt
  # CPU-sized (~30 min on 2 cores): the first 120 of the remaining ~2,000 pairs (in the seeded
  # split's order) train: one epoch of 30 DPO steps x 4 pairs. --config.data.n_train=0 uses
  # all of them (scale steps and batch sizes up on an accelerator).
  c.data.n_train = 120
  # Speed defaults: prefix-shared pairs packed into rows, vocabulary log-softmax
  # in chunks; --config.data.layout=plain --config.model.logps_chunk=0 turns both off.
  c.data.layout = "packed"
  c.model.logps_chunk = 128
  # Reference log-probs cached on disk (ref_cache.py): --config.reference_cache.enabled=False.
  c.reference_cache.enabled = True
  # 10 SFT steps x 8 demonstrations (the chosen responses of the training pairs), then
  # 30 DPO steps x 4 pairs.
  c.sft.steps, c.sft.batch_size, c.sft.lr, c.sft.warmup_steps = 10, 8, 2e-5, 2
  c.dpo.steps, c.dpo.batch_size, c.dpo.lr, c.dpo.warmup_steps = 30, 4, 5e-6, 3
  c.dpo.loss_kwargs = ml_collections.ConfigDict(dict(beta=0.1))
  c.ranking.enabled = False             # the testbed's train-pair ranking monitor
  c.heldout.enabled, c.heldout.every, c.heldout.n_pairs = True, 15, 64
  c.heldout.n_generations, c.heldout.max_new_tokens = 2, 48
  c.checkpoint.every, c.checkpoint.keep = 10, 2
  c.log_every = 5
  return c


# ------------------------------------------------------------------------------- RL recipes
# A verifiable task where SmolLM2-135M-Instruct starts above 5% and below 60%: sums of two
# one-digit numbers, one solved example before each question, the answer on a last line
# "Answer: X" (without the example it never uses the format: 0% strict; greedy with it ~20%).
TASK = "tasks:chain_sum"
TASK_OPTIONS = {"chain_sum": dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1)}


def real_rl_config(stages=("ppo", "eval")):
  """SmolLM2-135M-Instruct on verifiable tasks: prompts from reasoning-gym, the task's exact
  scorer as the judge (greedy held-out decoding of policy and reference)."""
  from prefjax.rl.stage import rl_config
  c = base_config()
  c.stages = stages
  c.model.init_from = assets.smollm2_gguf(required=False) or "SmolLM2-135M-Instruct.Q4_1.gguf"
  c.model.logps_chunk = 128
  c.data.train = TASK
  c.data.max_len = 192
  c.tasks.options = ml_collections.ConfigDict(TASK_OPTIONS)
  # The task allows ~200 distinct questions: 120 train prompts, 80 held out (disjoint).
  c.tasks.n_train, c.tasks.n_eval = 120, 80
  c.tasks.answer_format, c.tasks.shots = "line", 1
  c.rl = rl_config()
  c.rl.max_new_tokens = 24            # "Answer: X" is ~5 tokens; rows stay short
  c.rl.n_prompts = 120
  c.rl.missing_eos = "none"
  c.rl.checkpoint_every = 5
  c.eval.n_prompts, c.eval.n_samples, c.eval.temperature = 80, 1, 0.0
  c.eval.max_new_tokens = 24
  c.checkpoint.keep = 2
  c.ranking.enabled = False
  c.export.hf = False
  c.log_every = 1
  return c


def rl_quick(c):
  """A CPU smoke run of about three minutes: 1 iteration, 8 held-out prompts, short answers."""
  c.rl.iterations = 1
  c.eval.n_prompts = 8
  c.tasks.n_train, c.tasks.n_eval = 64, 8
  c.rl.n_prompts = 64
  return c


def apply_options(c, arg):
  """``quick`` shrinks everything; a loss name switches ``config.dpo.loss``."""
  for opt in [a for a in (arg or "").split(",") if a]:
    if opt == "quick":
      c.data.max_len, c.data.n_eval, c.data.n_train = 128, 16, 64
      c.sft.steps, c.sft.batch_size = 3, 2
      c.dpo.steps, c.dpo.batch_size = 4, 2
      c.heldout.every, c.heldout.n_pairs = 4, 16
      c.heldout.n_generations, c.heldout.max_new_tokens = 1, 16
      c.checkpoint.every = 2
      c.log_every = 1
      if "reward" in c:
        c.reward.steps, c.reward.batch_size, c.reward.n_pairs = 4, 2, 64
        c.reward.n_eval_pairs = 16
    elif opt in losses.names():
      c.dpo.loss = opt
      spec = losses.get_spec(opt)
      import inspect
      params = inspect.signature(spec.fn).parameters
      if "beta" not in params:
        c.dpo.loss_kwargs = ml_collections.ConfigDict()
    else:
      raise ValueError(f"unknown option {opt!r}: expected 'quick' or a loss name "
                       f"({', '.join(losses.names())})")
  return c
