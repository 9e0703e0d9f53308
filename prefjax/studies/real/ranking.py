"""Ranking accuracy of DPO on the model's own verifier-labelled samples (arXiv 2405.19534,
"Preference learning algorithms do not learn preference rankings").

Per seed: the start model's K samples of each training prompt; every prompt whose samples
differ gives its (best, worst) pair (verifier-labelled, alpha = 1). DPO trains on them from
the start model (also the reference) for ``steps`` updates; the policy is kept every
``every`` steps (checkpoints 0 = the reference, ..., the final policy). At each checkpoint:

  ranking       R (summed log-likelihoods) and R~ (per-token means) of held-out pairs (the
                validation prompts' samples: every (correct, wrong) pair of a prompt) and of
                the training pairs; the idealized R* / R~* (median over the paper's betas)
                that a perfect optimiser of the DPO objective would reach from the reference
  judge         held-out greedy verified accuracy, win rate vs the reference, KL
  flips         (final policy) of the training pairs the reference misranks, the fraction DPO
                fixed, by quartile of the DPO difficulty c = log pi_ref(y_l) - log pi_ref(y_w)

The paper's last claim is checked by how R and the win rate move together over checkpoints
(their per-seed correlation, and the changes near the reference vs further away).
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from prefjax.eval import pair_scoring
from prefjax.eval.real_ranking_study import flips_by_difficulty, table_rows
from prefjax.studies.real import report
from prefjax.studies.real.common import FULL_SIZES, QUICK_SIZES
from prefjax.studies.real.frame import (examples_from_pool, judge_fields, register_study,
                                        seeds)

KEYS = ("checkpoint",)
METRICS = ("step", "R_heldout", "R_norm_heldout", "R_train", "R_star_heldout", "gap_heldout",
           "accuracy", "win_rate", "kl")
BETAS = (0.01, 0.1, 1.0, 5.0, 10.0)


def heldout_pairs(pool) -> list[dict]:
  """Every (correct, wrong) pair of each prompt's samples."""
  out = []
  for item, rs, c in zip(pool.items, pool.responses, pool.correct):
    for n, (i, j) in enumerate(itertools.product(range(len(rs)), range(len(rs)))):
      if c[i] > c[j]:
        out.append({"id": f"{item.id}/{n}", "prompt": item.prompt, "chosen": rs[i],
                    "rejected": rs[j]})
  return out


def scores(env, params, enc):
  prompts, chosen, rejected = enc
  return pair_scoring.score_pairs(env.ctx.graphdef, params, prompts, chosen, rejected,
                                  max_len=env.sizes.max_len, batch_size=16)


def ranking_row(ref_s, pol_s) -> dict:
  """R, R~, idealized R* (median over betas) and the gap for one set of pairs."""
  alpha = np.ones(len(ref_s[0].sums))
  rows = table_rows({"ref": ref_s, "policy": pol_s}, alpha, BETAS)
  after = rows["after DPO"]
  return {"R": after["ranking/accuracy"], "R_norm": after["ranking/accuracy_normalized"],
          "R_star": after["ranking/idealized_accuracy/median"],
          "gap": after["ranking/alignment_gap"]}


def _report(rows, settings):
  final = max(r["step"] for r in rows)
  fin = [r for r in rows if r["step"] == final]
  claims = [report.claim_value("final policy's held-out ranking accuracy R below 0.6", fin,
                                "R_heldout", {}, against=0.6, claim_sign=-1),
            report.claim_value("alignment gap: idealized R* above R (final, held-out)", fin,
                               "gap_heldout", {}),
            report.claim_value("easy pairs flip more: wrong->right rate, easiest minus "
                               "hardest quartile (training pairs)", fin,
                               "flip_easy_minus_hard", {}),
            report.claim_value("R and win rate move together over checkpoints (per-seed "
                               "Pearson r)", fin, "corr_R_win", {})]
  return dict(title="Ranking accuracy vs win rate of DPO on verifier-labelled self-samples "
              "(arXiv 2405.19534), SmolLM2-135M-Instruct, chain_sum",
              keys=KEYS, metrics=METRICS, claims=claims, plot=_plot)


def _plot(table, path):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  xs = [d["kl"] for d in table]
  for m, label in (("R_heldout", "ranking accuracy R (held-out pairs)"),
                   ("R_star_heldout", "idealized R* (median beta)"),
                   ("win_rate", "win rate vs reference"), ("accuracy", "verified accuracy")):
    ax.errorbar(xs, [d[m] for d in table], yerr=[np.nan_to_num(d[m + "_se"]) for d in table],
                marker="o", capsize=3, label=label)
  ax.set_xlabel("KL to the reference (nats), checkpoints in order")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


BUDGET = dict(seeds=3, steps=24, every=8, batch_size=8, lr=5e-6, beta=0.1)
QUICK_BUDGET = dict(BUDGET, seeds=1, steps=2, every=1, batch_size=4)


@register_study("ranking", paper="2405.19534", report=_report, sizes=FULL_SIZES,
                quick_sizes=QUICK_SIZES, budget=BUDGET, quick_budget=QUICK_BUDGET)
def run(env, settings):
  """One row per (checkpoint, seed)."""
  b = settings.budget
  rows = settings.new_rows()
  for seed in seeds(settings):
    pool = env.pool(seed, settings.samples_dir)
    train_pairs = examples_from_pool("pairwise", pool)
    val_pool = env.pool(seed, settings.samples_dir, split="val")
    held = heldout_pairs(val_pool)
    enc = {}
    for name, pairs in (("train", train_pairs), ("heldout", held)):
      p, c, r, _, _ = pair_scoring.encode_pairs(env.tokenizer, pairs, max_len=env.sizes.max_len)
      enc[name] = (p, c, r)
    ref_scores = {k: scores(env, env.start, e) for k, e in enc.items()}
    kept = {0: env.start}

    def keep(state, step):
      kept[step] = jax.tree.map(jnp.copy, state["params"])
      return {}
    env.train(env.start, "dpo", {"beta": b["beta"]}, train_pairs, steps=b["steps"],
              batch_size=b["batch_size"], lr=b["lr"], seed=seed, log_every=b["every"],
              on_log=keep)
    seed_rows = []
    for i, step in enumerate(sorted(kept)):
      params = kept[step]
      row = dict(checkpoint=i, step=step, seed=seed, train_pairs=len(train_pairs),
                 heldout_pairs=len(held))
      for name, e in enc.items():
        pol = ref_scores[name] if step == 0 else scores(env, params, e)
        for k, v in ranking_row(ref_scores[name], pol).items():
          row[f"{k}_{name}"] = v
        if name == "train" and step == max(kept):
          f = flips_by_difficulty({"ref": ref_scores[name], "policy": pol},
                                  np.ones(len(pol[0].sums)))
          w = f["wrong_to_right"]
          row["flips_wrong_to_right_by_quartile"] = w
          row["flips_num_ref_wrong_by_quartile"] = f["num_ref_wrong"]
          row["flip_easy_minus_hard"] = float(w[0] - w[-1]) if len(w) > 1 else float("nan")
      j = env.judge(params, "test")
      row.update(judge_fields(j))
      seed_rows.append(row)
    r_ = np.array([r["R_heldout"] for r in seed_rows])
    w_ = np.array([r["win_rate"] for r in seed_rows])
    corr = float(np.corrcoef(r_, w_)[0, 1]) if r_.std() > 0 and w_.std() > 0 else float("nan")
    for r in seed_rows:
      r["corr_R_win"] = corr
    rows += seed_rows
    kept.clear()
  return rows
