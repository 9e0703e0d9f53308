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
   the edited answer scores above the original (each model scores the edits once, the
   prompt once per pair: ``token_scores``, ``sequence_scores``).
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
from prefjax.rewards.scorer import RewardScorer
from prefjax.rewards.token_model import (TokenRewardModel, encode_edit_pair, flaw_detection,
                                         token_reward_params_from_backbone)
from prefjax.rl import reward_sources as rw
from prefjax.rl.shared_rows import edit_pair_rows
from prefjax.studies.real import report
from prefjax.studies.real.common import FULL_SIZES, QUICK_SIZES, fill_batch, reward_grid
from prefjax.studies.real.frame import edits, judge_fields, register_study, seeds, tune_once
from prefjax.studies.real.rl_arm import Arm, hold, run_rl
from prefjax.train.objective import forward_token, make_objective

KEYS = ("method",)
METRICS = ("accuracy", "gain", "win_rate", "kl", "length", "precision", "recall",
           "token_rm_accuracy", "sequence_rm_accuracy")


def row_len(env, examples, *, shared: bool = False, multiple: int = 32) -> int:
  """The longest edit row of ``examples`` rounded up to ``multiple`` (the study's max_len
  when there are none).

  Plain rows (``shared=False``): the prompt + the longer of its two responses, at most
  max_len; the token reward model's eval rows are padded to it (its token labels [T] rule
  out per-batch length buckets): ~160 tokens here, not 192. Prefix-shared rows
  (``shared=True``, ``edit_pair_rows``): the prompt + both responses, the one length both
  reward models train and the token reward model scores on."""
  tok = env.tokenizer

  def tokens(e):
    sides = [len(tok.encode_completion(e[k])) for k in ("original", "edited")]
    return len(tok.encode_prompt(e["prompt"])) + (sum(sides) if shared else max(sides))
  n = -(-max(map(tokens, examples), default=env.sizes.max_len) // multiple) * multiple
  return n if shared else min(env.sizes.max_len, n)


def train_token_rm(env, examples, t, seed, max_len):
  graphdef, params, g = reward_grid(env, TokenRewardModel(env.ctx.model_cfg, nnx.Rngs(seed)),
                              token_reward_params_from_backbone, max_len=max_len)
  enc = encode_edit_pair(env.tokenizer, max_len)
  examples = fill_batch(examples, t["batch_size"])
  # full-length rows: the token labels [T] are not cut with the rows' length buckets; the
  # model runs on each pair as one prefix-shared row (the prompt once), of one length
  batches = pipeline.batched(examples, enc, t["batch_size"], seed=seed, num_steps=t["steps"],
                             bucket=False).map(functools.partial(
                                 edit_pair_rows, width=row_len(env, examples, shared=True)))
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
                                    max_len=row_len(env, examples, shared=True))
  pairs = [{"id": e["id"], "prompt": e["prompt"], "chosen": e["edited"],
            "rejected": e["original"]} for e in examples]
  params, _ = env.train(params, "bradley_terry", {}, pairs, steps=t["steps"],
                        batch_size=t["batch_size"], lr=t["lr"], seed=seed, grid=g,
                        lr_multipliers={"head": t["head_lr_multiplier"]})
  return graphdef, params


@functools.partial(jax.jit, static_argnames="graphdef")
def _token_scores(graphdef, params, batch):
  """The token reward model on a batch of edit pairs (``edit_pair_rows``: each pair one
  prefix-shared row, the training forward): both sides' summed token rewards and the
  original's (rejected side's) token rewards."""
  out = forward_token(nnx.merge(graphdef, params), batch)
  return {"chosen": out["chosen_token_rewards"].sum(-1),
          "rejected": out["rejected_token_rewards"].sum(-1),
          "rejected_token_rewards": out["rejected_token_rewards"]}


def token_scores(env, graphdef, params, examples, enc) -> dict:
  """The token reward model over the edit pairs ``examples`` in one pass (``_token_scores``
  per eval batch of 16, concatenated) with each batch's ``example_mask`` and the original's
  flaw labels and loss mask: every held-out metric of the model from one scoring."""
  cols: dict = {}
  width = row_len(env, examples, shared=True)
  for b in pipeline.eval_batches(examples, enc, 16, bucket=False):
    out = dict(_token_scores(graphdef, params, edit_pair_rows(b, width=width)),
               **{k: b[k] for k in ("example_mask", "rejected_flaw_labels",
                                    "rejected_loss_mask")})
    for k, v in out.items():
      cols.setdefault(k, []).append(np.asarray(v))
  return {k: np.concatenate(v) for k, v in cols.items()}


def sequence_scores(env, graphdef, params, examples, max_len) -> dict:
  """The sequence reward model's rewards of each pair's edited (``chosen``) and original
  (``rejected``) answer, by the prefix-sharing ``RewardScorer`` (a prompt's answers share
  one unit, the prompt run once)."""
  n = len(examples)
  scorer = RewardScorer(graphdef, params, env.tokenizer, max_len=max_len, progress=False)
  r = scorer.score([e["prompt"] for e in examples] * 2,
                   [e["edited"] for e in examples] + [e["original"] for e in examples])
  return {"chosen": r[:n], "rejected": r[n:], "example_mask": np.ones(n, np.float32)}


def pair_accuracy(scores: dict) -> float:
  """Fraction of edit pairs whose edited (correct) answer scores above the original (wrong)
  one (``scores``: ``chosen`` / ``rejected`` [N] and ``example_mask``; padding rows do not
  count): how well a reward model tells the verifier's right from wrong answers."""
  m = np.asarray(scores.get("example_mask", np.zeros(0)), np.float64)
  if not m.sum():
    return float("nan")
  return float(((scores["chosen"] > scores["rejected"]) * m).sum()) / float(m.sum())


def flaw_metrics(scores: dict, threshold: float) -> dict:
  """Precision / recall of the original's tokens the token reward model flags
  (r_t < -threshold) against the edit diff (``token_scores``)."""
  out = flaw_detection(scores["rejected_token_rewards"], scores["rejected_flaw_labels"],
                       scores["rejected_loss_mask"] * scores["example_mask"][:, None],
                       threshold=threshold)
  return {"precision": out["token_rm/precision"], "recall": out["token_rm/recall"],
          "flagged_fraction": out["token_rm/flagged_fraction"]}


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
    enc_len = row_len(env, train_edits + val_edits)
    tg, tp, enc = train_token_rm(env, train_edits, b["token_rm"], seed, enc_len)
    held_out = val_edits or train_edits
    token = token_scores(env, tg, tp, held_out, enc)
    sg, sp = train_sequence_rm(env, train_edits, b["sequence_rm"], seed)
    flaws = dict(flaw_metrics(token, b["token_rm"]["threshold"]),
                 token_rm_accuracy=pair_accuracy(token),
                 sequence_rm_accuracy=pair_accuracy(
                     sequence_scores(env, sg, sp, held_out, enc_len)))
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
