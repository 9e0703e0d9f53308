"""DPO and its variants across starting points and data sizes (arXiv 2404.14723, "Insights
into alignment: evaluating DPO and its variants across multiple tasks").

Preference data: per seed, the instruct model's K samples of each training prompt scored by
the verifier; a prompt whose samples differ gives the (best, worst) pair (KTO: each sample
labelled desirable above the prompt's mean score, undesirable below). Arms:

  method  dpo | ipo | kto | cpo | orpo | simpo       (any registered pairwise / unpaired loss)
  start   instruct    SmolLM2-135M-Instruct as it is
          sft_task    + SFT on the task's correct answers (the training prompts' reference
                      answers in the requested format)
          sft_other   + SFT on another verifiable task's correct answers (same answer format)
  size    small | medium | large: the first 1/4, 1/2 or all of the training prompts' pairs;
          the same number of updates for every size (smaller sets are seen more often)

Each arm's policy is judged against its own start (verified win rate, KL) and its held-out
greedy verified accuracy is reported beside the start's. Every method gets the same
hyper-parameter budget (``space``), chosen on validation prompts at (instruct, medium) on the
first seed. The full grid (6 x 3 x 3 arms x 3 seeds) does not fit an hour on a 2-core CPU:
``grid="cut"`` (default) runs every method at (instruct, medium) and DPO across starts and
sizes; ``--set grid=full`` runs all arms (GPU-sized).
"""
from __future__ import annotations

import time

from prefjax.data import tasks as tasks_lib
from prefjax.losses import get_spec
from prefjax.studies.real import report
from prefjax.studies.real.common import FULL_SIZES, QUICK_SIZES
from prefjax.studies.real.frame import (examples_from_pool, judge_fields, register_study, seeds,
                                        sft_examples, tune_once)

KEYS = ("method", "start", "size")
METRICS = ("accuracy", "start_accuracy", "gain", "win_rate", "kl", "length", "val_accuracy",
           "examples")
FRACTIONS = {"small": 0.25, "medium": 0.5, "large": 1.0}


def arms(b) -> list[tuple[str, str, str]]:
  """(method, start, size) of every arm the budget runs (the tuning arm first)."""
  m0, s0, z0 = b["methods"][0], b["starts"][0], b["default_size"]
  if b["grid"] == "full":
    return [(m, s, z) for s in b["starts"] for z in b["sizes"] for m in b["methods"]]
  out = [(m, s0, z0) for m in b["methods"]]
  out += [(m0, s, z0) for s in b["starts"] if s != s0]
  out += [(m0, s0, z) for z in b["sizes"] if z != z0]
  return out


def other_task_sft(env, b) -> list[dict]:
  """Demonstrations of another verifiable task (``b["other_task"]``), same answer format."""
  t = env.ctx.config.tasks
  ts = tasks_lib.TaskSet((b["other_task"],), seed=t.seed, n_train=env.sizes.n_train, n_eval=1,
                         options=dict(b.get("other_options") or {}),
                         answer_format=t.answer_format, shots=t.shots)
  return [{"id": p.id, "prompt": p.messages, "response": ts.format_answer(p.answer)}
          for p in ts.prompts("train") if p.answer]


def starts(env, b, seed) -> dict:
  """{start name: params}, the SFT starts trained from the instruct model."""
  out = {"instruct": env.start}
  ts = env.taskset
  sft = b["sft"]
  demos = {"sft_task": sft_examples(env.train_items,
                                    [ts.format_answer(x.meta.answer) for x in env.train_items]),
           "sft_other": other_task_sft(env, b)}
  for name in b["starts"]:
    if name != "instruct":
      out[name] = env.train(env.start, "sft", {}, demos[name], steps=sft["steps"],
                            batch_size=sft["batch_size"], lr=sft["lr"], seed=seed)[0]
  return out


def _report(rows, settings):
  b = settings.budget
  m0, s0, z0 = b["methods"][0], b["starts"][0], b["default_size"]
  claims = []
  for s in b["starts"]:
    claims.append(report.claim_value(f"{m0} from {s} ({z0}) above its start", rows, "gain",
                                     {"method": m0, "start": s, "size": z0}))
  sizes = [z for z in b["sizes"]]
  if len(sizes) > 1:
    claims.append(report.claim_line(
        f"{m0}: {sizes[0]} data above {sizes[-1]} data (gain over the start)", rows, "gain",
        {"method": m0, "start": s0, "size": sizes[0]},
        {"method": m0, "start": s0, "size": sizes[-1]}))
  for m in b["methods"][1:]:
    claims.append(report.claim_line(f"{m} vs {m0} ({s0}, {z0})", rows, "accuracy",
                                    {"method": m, "start": s0, "size": z0},
                                    {"method": m0, "start": s0, "size": z0}))
  return dict(title="DPO variants x starts x data sizes (arXiv 2404.14723), SmolLM2-135M-"
              "Instruct, chain_sum, held-out greedy verified accuracy",
              keys=KEYS, metrics=METRICS, claims=claims,
              notes=[f"grid: {b['grid']} (arms: {len(arms(b))})"],
              plot=lambda table, path: report.bar_plot(
                  [dict(d, arm=f"{d['start']}/{d['size']}") for d in table], path,
                  group="arm", series="method", metric="gain",
                  ylabel="verified accuracy - start's"))


BUDGET = dict(
    seeds=3, grid="cut",
    methods=("dpo", "ipo", "kto", "cpo", "orpo", "simpo"),
    starts=("instruct", "sft_task", "sft_other"), sizes=("small", "medium", "large"),
    default_size="medium", steps=8, batch_size=4, space={"lr": [3e-6, 1e-5]},
    loss_kwargs={"dpo": {"beta": 0.1}, "ipo": {"beta": 0.5}, "kto": {"beta": 0.1},
                 "cpo": {"beta": 0.1}, "orpo": {"beta": 0.1},
                 "simpo": {"beta": 2.0, "gamma": 1.0}},
    sft=dict(steps=8, batch_size=8, lr=1e-5),
    other_task="basic_arithmetic",
    other_options={"basic_arithmetic": dict(min_terms=2, max_terms=2, min_digits=1,
                                            max_digits=1, operators=("*",),
                                            allow_negation=False)})
QUICK_BUDGET = dict(BUDGET, seeds=1, methods=("dpo", "kto"),
                    starts=("instruct", "sft_task"), sizes=("large",), default_size="large",
                    steps=2, batch_size=4,
                    space={"lr": [3e-6]}, sft=dict(steps=2, batch_size=4, lr=1e-5))


@register_study("variants", paper="2404.14723", report=_report, sizes=FULL_SIZES,
                quick_sizes=QUICK_SIZES, budget=BUDGET, quick_budget=QUICK_BUDGET)
def run(env, settings):
  """One row per (method, start, size, seed)."""
  b = settings.budget
  rows, chosen = settings.new_rows(), {}
  for seed in seeds(settings):
    pool = env.pool(seed, settings.samples_dir)
    start_params = starts(env, b, seed)
    for method, start, size in arms(b):
      kind = get_spec(method).kind
      n = max(1, round(FRACTIONS[size] * len(pool.items)))
      examples = examples_from_pool(kind, pool.subset(n))
      s_params = start_params[start]

      def train(lr, method=method, examples=examples, s_params=s_params):
        return env.train(s_params, method, b["loss_kwargs"][method], examples,
                         steps=b["steps"], batch_size=b["batch_size"], lr=lr, seed=seed)[0]
      t0 = time.perf_counter()
      params, hp, val = tune_once(env, chosen, method, train, b["space"])
      j = env.judge(params, "test", reference=s_params, reference_key=(start, seed))
      rows.append(dict(method=method, start=start, size=size, seed=seed, **hp,
                       examples=len(examples), val_accuracy=val,
                       **judge_fields(j, reference="start_accuracy"),
                       seconds=time.perf_counter() - t0))
      del params
  return rows
