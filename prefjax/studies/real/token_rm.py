"""Fine-grained (token-level) rewards from minimal edits (arXiv 2406.02756, "Aligning large
language models via fine-grained supervision").

Per seed, from the start model's K samples of each training prompt:

1. Minimal edits made by the verifier: a wrong answer's final ``Answer: X`` line gets the
   correct X (a response without that line gets one appended); nothing else changes. The
   (original, edited) pairs carry token labels from the token diff.
2. A token-level reward model (``prefjax.rewards.token_model``, Bradley-Terry on summed token
   rewards plus the diff labels) trained on them; precision / recall of the tokens it flags
   (r_t < -threshold) against the edit diff, on the validation prompts' edits. A sequence
   reward model (Bradley-Terry, scalar head) is trained on the same pairs.
   Both reward models' pair accuracy on the held-out edits (``pair_accuracy``): how often
   the edited answer scores above the original.
3. Four RL runs from the start model, same prompts and budget (``prefjax.rl.stage``, the
   recipes of experiments/real/smollm2_{ppo,grpo}.py, shortened): fine-grained PPO with the
   token reward model, PPO with the sequence reward model, and as controls PPO and GRPO
   with the verifier (``rl_arm``). Each method gets the same lr grid, chosen by greedy
   verified accuracy on the validation prompts with the first seed. Held-out greedy
   verified accuracy and win rate vs the start model.
"""
from __future__ import annotations

import functools
import time

import jax
import numpy as np
from flax import nnx

from prefjax.data import pipeline
from prefjax.rewards.model import RewardModel, reward_params_from_backbone
from prefjax.rewards.token_model import (TokenRewardModel, encode_edit_pair, flaw_detection,
                                         token_reward_params_from_backbone)
from prefjax.rl import reward_sources as rw
from prefjax.rl.reward_models import _token_rewards
from prefjax.rl.shared_rows import edit_pair_rows
from prefjax.studies.real import report
from prefjax.studies.real.common import FULL_SIZES, QUICK_SIZES, fill_batch, reward_grid
from prefjax.studies.real.frame import edits, judge_fields, register_study, seeds, tune_once
from prefjax.studies.real.rl_arm import Arm, hold, run_rl
from prefjax.train.objective import make_objective

KEYS = ("method",)
METRICS = ("accuracy", "gain", "win_rate", "kl", "length", "precision", "recall",
           "token_rm_accuracy", "sequence_rm_accuracy")


def row_len(env, examples, multiple: int = 32) -> int:
  """The longest edit row (prompt + the longer of its two responses) rounded up to
  ``multiple``, at most the study's max_len. The token reward model's rows are padded to it
  (its token labels [T] rule out per-batch length buckets): ~160 tokens here, not 192."""
  tok = env.tokenizer
  n = max((len(tok.encode_prompt(e["prompt"]))
           + max(len(tok.encode_completion(e[k])) for k in ("original", "edited"))
           for e in examples), default=env.sizes.max_len)
  return min(env.sizes.max_len, -(-n // multiple) * multiple)


def shared_row_len(env, examples, multiple: int = 32) -> int:
  """A bound on the longest prefix-shared edit row (prompt + both responses), rounded up to
  ``multiple``: the token reward model trains on rows of this one length."""
  tok = env.tokenizer
  n = max(len(tok.encode_prompt(e["prompt"])) + sum(len(tok.encode_completion(e[k]))
                                                    for k in ("original", "edited"))
          for e in examples)
  return -(-n // multiple) * multiple


def train_token_rm(env, examples, t, seed, max_len):
  graphdef, params, g = reward_grid(env, TokenRewardModel(env.ctx.model_cfg, nnx.Rngs(seed)),
                              token_reward_params_from_backbone, max_len=max_len)
  enc = encode_edit_pair(env.tokenizer, max_len)
  examples = fill_batch(examples, t["batch_size"])
  # full-length rows: the token labels [T] are not cut with the rows' length buckets; the
  # model runs on each pair as one prefix-shared row (the prompt once), of one length
  batches = pipeline.batched(examples, enc, t["batch_size"], seed=seed, num_steps=t["steps"],
                             bucket=False).map(functools.partial(
                                 edit_pair_rows, width=shared_row_len(env, examples)))
  params, _ = g.train(params, make_objective("token_bt", {"label_coef": t["label_coef"]}),
                      examples, enc, steps=t["steps"], batch_size=t["batch_size"], lr=t["lr"],
                      seed=seed, batches=batches,
                      lr_multipliers=dict.fromkeys(("w", "b"), t["head_lr_multiplier"]))
  return graphdef, params, enc


def train_sequence_rm(env, examples, t, seed):
  """A Bradley-Terry reward model on the same edit pairs, trained on prefix-shared rows
  ([prompt | edited | original], ``env.train``): the ~120-token prompt once per pair."""
  graphdef, params, g = reward_grid(env, RewardModel(env.ctx.model_cfg, nnx.Rngs(seed)),
                                    reward_params_from_backbone,
                                    max_len=shared_row_len(env, examples))
  pairs = [{"id": e["id"], "prompt": e["prompt"], "chosen": e["edited"],
            "rejected": e["original"]} for e in examples]
  params, _ = env.train(params, "bradley_terry", {}, pairs, steps=t["steps"],
                        batch_size=t["batch_size"], lr=t["lr"], seed=seed, grid=g,
                        lr_multipliers={"head": t["head_lr_multiplier"]})
  return graphdef, params


def flaw_metrics(graphdef, params, examples, enc, threshold) -> dict:
  rs, fs, ms = [], [], []
  for b in pipeline.eval_batches(examples, enc, 16, bucket=False):
    rs.append(np.asarray(_token_rewards(graphdef, params, b)))
    fs.append(b["rejected_flaw_labels"])
    ms.append(b["rejected_loss_mask"] * b["example_mask"][:, None])
  out = flaw_detection(np.concatenate(rs), np.concatenate(fs), np.concatenate(ms),
                       threshold=threshold)
  return {"precision": out["token_rm/precision"], "recall": out["token_rm/recall"],
          "flagged_fraction": out["token_rm/flagged_fraction"]}


@functools.partial(jax.jit, static_argnames=("graphdef", "prefix"))
def _sequence_scores(graphdef, params, batch, prefix):
  return nnx.merge(graphdef, params).rewards(batch, prefix=prefix)


@functools.partial(jax.jit, static_argnames=("graphdef", "prefix"))
def _summed_token_scores(graphdef, params, batch, prefix):
  return nnx.merge(graphdef, params).token_rewards(batch, prefix=prefix).sum(-1)


def pair_accuracy(score, graphdef, params, examples, enc) -> float:
  """Fraction of edit pairs whose edited (correct) answer ``score``s above the original
  (wrong) one: how well a reward model tells the verifier's right from wrong answers.
  ``score``: ``_sequence_scores`` or ``_summed_token_scores``."""
  wins, n = 0.0, 0.0
  for b in pipeline.eval_batches(examples, enc, 16, bucket=False):
    m = np.asarray(b["example_mask"])
    up = np.asarray(score(graphdef, params, b, "chosen_")) > np.asarray(
        score(graphdef, params, b, "rejected_"))
    wins, n = wins + float((up * m).sum()), n + float(m.sum())
  return wins / n if n else float("nan")


def _report(rows, settings):
  claims = [report.claim_line("fine-grained PPO above PPO with a sequence RM (win rate vs "
                              "the start)", rows, "win_rate", {"method": "fine_grained_ppo"},
                              {"method": "sequence_rm_ppo"}),
            report.claim_line("fine-grained PPO above PPO with a sequence RM (verified "
                              "accuracy)", rows, "accuracy", {"method": "fine_grained_ppo"},
                              {"method": "sequence_rm_ppo"}),
            report.claim_line("fine-grained PPO vs GRPO with the verifier (accuracy)", rows,
                              "accuracy", {"method": "fine_grained_ppo"},
                              {"method": "grpo_verifier"})]
  ref = rows[0].get("reference_accuracy") if rows else None
  return dict(title="Token-level reward model from minimal edits, fine-grained PPO (arXiv "
              "2406.02756), SmolLM2-135M-Instruct, chain_sum",
              keys=KEYS, metrics=METRICS, claims=claims,
              notes=["precision / recall: the token reward model's flagged tokens "
                     "(r_t < -threshold) vs the edit diff on the validation prompts' edits "
                     "(the same numbers on every row of a seed)",
                     f"every RL method's setting chosen from {settings.budget['space']} on "
                     "the validation prompts (first seed; val_accuracy)"],
              plot=lambda table, path: report.bar_plot(
                  [dict(d, what="policy") for d in table], path, group="what",
                  series="method", metric="accuracy", ylabel="held-out verified accuracy",
                  reference=ref))


# The reward heads start at zero; at the backbone's lr they barely move in a few steps (the
# token RM's r_t stay far inside the flagging threshold), so they learn at 100x, as in
# experiments/real/smollm2_reward.py. Every RL method gets the same lr grid (``space``),
# chosen on the validation prompts with the first seed and kept for the others. Rollouts at
# temperature 0.5 and lr up to 1e-5: at the recipes' 0.8 and lr <= 3e-6, four iterations left
# every arm, GRPO with the verifier included, at or below its start. PPO with the verifier
# is the control that separates the reward models from PPO itself. The reward models see 256
# of the ~340 edit pairs (32 steps of 8): at 8 steps they ranked 80-86% of held-out edits
# right and PPO with either one fell below its start.
_RM = dict(steps=32, batch_size=8, lr=1e-5, head_lr_multiplier=100.0)
BUDGET = dict(seeds=3, methods=("fine_grained_ppo", "sequence_rm_ppo", "ppo_verifier",
                                "grpo_verifier"),
              token_rm=dict(_RM, label_coef=1.0, threshold=0.5), sequence_rm=dict(_RM),
              iterations=4, rollout_batch_size=16, minibatch_size=8, group_size=4,
              n_prompts=96, temperature=0.5, space={"lr": [3e-6, 1e-5]})
QUICK_BUDGET = dict(BUDGET, seeds=1,
                    methods=("fine_grained_ppo", "sequence_rm_ppo", "grpo_verifier"),
                    token_rm=dict(BUDGET["token_rm"], steps=2, batch_size=4),
                    sequence_rm=dict(BUDGET["sequence_rm"], steps=2, batch_size=4),
                    iterations=1, rollout_batch_size=8, minibatch_size=8, group_size=4,
                    n_prompts=16, space={"lr": [3e-6]})
# row name -> (recipe, reward source: a held reward model's prefix, or a registered source)
ARMS = {"fine_grained_ppo": ("ppo", "token"), "sequence_rm_ppo": ("ppo", "sequence"),
        "ppo_verifier": ("ppo", "verifier"), "grpo_verifier": ("grpo", "verifier")}


@register_study("token_rm", paper="2406.02756", report=_report, sizes=FULL_SIZES,
                quick_sizes=QUICK_SIZES, budget=BUDGET, quick_budget=QUICK_BUDGET)
def run(env, settings):
  """One row per (method, seed)."""
  b = settings.budget
  rows, chosen = settings.new_rows(), {}
  for seed in seeds(settings):
    t0 = time.perf_counter()
    pool = env.pool(seed, settings.samples_dir)
    train_edits = edits(pool, env.taskset)
    val_edits = edits(env.pool(seed, settings.samples_dir, split="val"), env.taskset)
    tg, tp, enc = train_token_rm(env, train_edits, b["token_rm"], seed,
                                 row_len(env, train_edits + val_edits))
    held_out = val_edits or train_edits
    flaws = flaw_metrics(tg, tp, held_out, enc, b["token_rm"]["threshold"])
    sg, sp = train_sequence_rm(env, train_edits, b["sequence_rm"], seed)
    flaws.update(token_rm_accuracy=pair_accuracy(_summed_token_scores, tg, tp, held_out, enc),
                 sequence_rm_accuracy=pair_accuracy(_sequence_scores, sg, sp, held_out, enc))
    rm_seconds = time.perf_counter() - t0
    with hold(f"token{seed}", rw.token_rm_source(tg, tp)) as token, \
         hold(f"sequence{seed}", rw.sequence_rm_source(sg, sp)) as sequence:
      sources = {"token": token, "sequence": sequence, "verifier": "verifier"}
      for method in b["methods"]:
        recipe, reward = ARMS[method]
        train = functools.partial(run_rl, env, Arm(method, recipe, sources[reward]), b,
                                  seed=seed, out=settings.out)
        t1 = time.perf_counter()
        params, hp, val = tune_once(env, chosen, method, train, b["space"])
        j = env.judge(params, "test")
        rows.append(dict(method=method, seed=seed, **hp, val_accuracy=val,
                         edits=len(train_edits), val_edits=len(val_edits), **flaws,
                         rm_seconds=rm_seconds, **judge_fields(j),
                         seconds=time.perf_counter() - t1))
        del params
  return rows
