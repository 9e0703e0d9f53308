"""mDPO and mIPO vs DPO under label noise (arXiv 2410.12138, "Preference optimisation with
multi-sample comparisons").

Per seed, the start model (SmolLM2-135M-Instruct) answers every training prompt K = 4 times;
the verifier scores the answers. With probability ``noise`` a prompt's preference is reversed
(its scores negated, seeded), then

  dpo    trains on the (best, worst) pair of each prompt whose answers differ
  mdpo   trains on groups: the top K/2 answers chosen, the bottom K/2 rejected (mean of the
         log-ratios inside each group, arXiv 2410.12138 eq. for mDPO)
  mipo   the same groups with the IPO objective

Each method gets the same hyper-parameter budget (``budget["space"]``: learning rates),
chosen by greedy verified accuracy on validation prompts (training prompts held back) at
noise 0 on the first seed, then used at every noise level and seed. Reported: held-out
greedy verified accuracy (and win rate, KL, length against the start model) by noise level.
The paper's other claim (multi-sample comparisons fix collective properties such as answer
diversity) needs a prompt whose answer distribution is the target and is not run here.
"""
from __future__ import annotations

import time

from prefjax.losses import get_spec
from prefjax.studies.real import report
from prefjax.studies.real.common import FULL_SIZES, QUICK_SIZES, noisy_scores
from prefjax.studies.real.frame import (examples_from_pool, judge_fields, register_study, seeds,
                                        tune_once)

KEYS = ("method", "noise")
METRICS = ("accuracy", "gain", "win_rate", "kl", "length", "val_accuracy", "examples")


def _report(rows, settings):
  b = settings.budget
  claims = []
  for p in b["noise"]:
    if p == 0:
      continue
    for m in b["methods"]:
      if m != "dpo":
        claims.append(report.claim_line(
            f"{m} above dpo at label noise {p}", rows, "accuracy",
            {"method": m, "noise": p}, {"method": "dpo", "noise": p}))
  ref = rows[0]["reference_accuracy"] if rows else None
  return dict(title="mDPO / mIPO vs DPO under label noise (arXiv 2410.12138), SmolLM2-135M-"
              "Instruct, chain_sum, held-out greedy verified accuracy",
              keys=KEYS, metrics=METRICS, claims=claims,
              plot=lambda table, path: report.line_plot(
                  table, path, x="noise", series="method", metric="accuracy",
                  ylabel="held-out verified accuracy", reference=ref))


BUDGET = dict(seeds=3, methods=("dpo", "mdpo", "mipo"), noise=(0.0, 0.2, 0.4), steps=8,
              batch_size=4, space={"lr": [3e-6, 1e-5]},
              loss_kwargs={"dpo": {"beta": 0.1}, "mdpo": {"beta": 0.1}, "mipo": {"beta": 0.5}})
QUICK_BUDGET = dict(BUDGET, seeds=1, methods=("dpo", "mdpo"), noise=(0.0, 0.4), steps=2,
                    batch_size=4, space={"lr": [3e-6]})


@register_study("mdpo", paper="2410.12138", report=_report, sizes=FULL_SIZES,
                quick_sizes=QUICK_SIZES, budget=BUDGET, quick_budget=QUICK_BUDGET)
def run(env, settings):
  """One row per (method, noise, seed)."""
  b = settings.budget
  rows, chosen = settings.new_rows(), {}
  for seed in seeds(settings):
    pool = env.pool(seed, settings.samples_dir)
    for noise in b["noise"]:
      scores = noisy_scores(pool.correct, noise, seed)
      for method in b["methods"]:
        kind = get_spec(method).kind
        examples = examples_from_pool(kind, pool, scores)

        def train(lr, method=method, examples=examples):
          return env.train(env.start, method, b["loss_kwargs"][method], examples,
                           steps=b["steps"], batch_size=b["batch_size"], lr=lr, seed=seed)[0]
        t0 = time.perf_counter()
        # tuned once, on the validation prompts, at the first seed and noise
        params, hp, val = tune_once(env, chosen, method, train, b["space"])
        j = env.judge(params, "test")
        rows.append(dict(method=method, noise=noise, seed=seed, **hp,
                         examples=len(examples), val_accuracy=val,
                         **judge_fields(j),
                         seconds=time.perf_counter() - t0))
        del params
  return rows
