"""Study: 'Insights into Alignment' (Saeidi et al., arXiv 2404.14723) on the testbed.

methods {SFT only, DPO, IPO, KTO, CPO, ORPO, SimPO} x starting points {SFT then align,
base model directly, instruction-tuned on other tasks} x training-set sizes x tasks.
Metrics (held-out prompts, exact oracle): win rate vs the starting model, oracle reward,
KL(policy || start). Starting models are trained once per task and reused; every method's
step is compiled once for the whole grid. "SFT only" = continued SFT on the chosen
responses of the same preference set (same steps), the paper's SFT baseline.
The base and other-task starts score r* = 0 on the target task (no valid format), so their
r* win rates are exact ties; every run therefore also reports the graded-oracle win rate
(``prefjax.testbed.graded``: 1 - normalised edit distance to the correct answer).

  python scripts/study_insights.py --out experiments/insights_alignment/quick --quick
  python scripts/study_insights.py --out experiments/insights_alignment/full
  python scripts/study_insights.py --out experiments/insights_alignment/default_sft --starts sft
Writes results.csv, results.md (table), results.png under --out.
"""
from __future__ import annotations

import csv
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging
from tqdm.auto import tqdm

from prefjax.cli import main_guard
from prefjax.errors import ConfigError
from prefjax.data import pipeline
from prefjax.studies.align_grid import Grid
from prefjax.testbed import world
from prefjax.testbed.graded import graded_win_rate
from prefjax.train.objective import make_objective

METHODS = {  # name -> (registered loss, hyper-parameters)
    "sft_only": ("sft", {}),
    "dpo": ("dpo", {"beta": 0.3}),
    "ipo": ("ipo", {"beta": 0.3}),
    "kto": ("kto", {"beta": 0.3}),
    "cpo": ("cpo", {"beta": 0.3}),
    "orpo": ("orpo", {}),
    "simpo": ("simpo", {}),
}
STARTS = ("sft", "base", "other_tasks")
OTHER = {"sort": "add", "add": "sort", "pick": "add"}   # SFT task for "other_tasks"

_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_QUICK = flags.DEFINE_bool("quick", False, "The small `quick` grid instead of `default`.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the testbed world and models.")
_STARTS = flags.DEFINE_string("starts", ",".join(STARTS),
                              f"comma-separated subset of {','.join(STARTS)}")

GRIDS = {
    "quick": dict(tasks=("sort", "add"), sizes=(32, 100, 320), n_layers=1, dim=64,
                  sft_steps=200, align_steps=40, batch=16, n_eval=64, n_eval_samples=2),
    "default": dict(tasks=("sort", "add", "pick"), sizes=(64, 200, 640), n_layers=1, dim=64,
                    sft_steps=300, align_steps=60, batch=16, n_eval=128, n_eval_samples=2),
}


def run(out, grid_name, seed=0, starts_to_run=STARTS):
  g = dict(GRIDS[grid_name], starts=tuple(starts_to_run))
  os.makedirs(out, exist_ok=True)
  t0, load0 = time.perf_counter(), os.getloadavg()[0]
  grid = Grid.make(n_layers=g["n_layers"], dim=g["dim"], seed=seed)
  tok = grid.tok
  rows = []
  total = len(g["tasks"]) * len(starts_to_run) * len(g["sizes"]) * len(METHODS)
  bar = tqdm(total=total, desc="insights grid", dynamic_ncols=True)
  sft_models = {}   # SFT task -> params: "sft" of one task is "other_tasks" of another

  def sft_on(task):
    if task not in sft_models:
      demos = world.sft_examples(world.WorldConfig(tasks=(task,), seed=seed), 2000)
      sft_models[task] = grid.sft(grid.init_params, demos, steps=g["sft_steps"],
                                  batch_size=32, lr=3e-3, warmup=10)
    return sft_models[task]

  for task in g["tasks"]:
    wcfg = world.WorldConfig(tasks=(task,), seed=seed)
    starts = {"base": lambda: grid.init_params, "sft": lambda: sft_on(task),
              "other_tasks": lambda: sft_on(OTHER[task])}
    prompts = world.eval_prompts(wcfg, g["n_eval"])
    for start in starts_to_run:
      ref = starts[start]()
      for size in g["sizes"]:
        pairs = world.preference_pairs(wcfg, size)
        for method, (loss, hp) in METHODS.items():
          obj = make_objective(loss, hp)
          kind = obj.spec.kind
          if kind == "sft":
            ex = [{"prompt": p["prompt"], "response": p["chosen"], "id": p["id"]}
                  for p in pairs]
            enc = pipeline.encode_sft(tok, grid.max_len)
          elif kind == "unpaired":
            ex, enc = world.unpaired_from_pairs(pairs), pipeline.encode_unpaired(tok, grid.max_len)
          else:
            ex, enc = pairs, pipeline.encode_pair(tok, grid.max_len)
          lr = 1e-3 if kind == "sft" else 3e-4
          pol, loss_val = grid.train(ref, obj, ex, enc, steps=g["align_steps"],
                                     batch_size=g["batch"], lr=lr, ref_params=ref)
          res, det = grid.evaluate(pol, ref, prompts, n_samples=g["n_eval_samples"])
          gwin, gpol, gref = graded_win_rate(det["tasks"], det["prompts"], det["policy"],
                                             det["reference"])
          rows.append({"task": task, "start": start, "size": size, "method": method,
                       "win_rate": res["win_rate_vs_reference"],
                       "graded_win_rate": gwin, "graded_reward": gpol,
                       "graded_reward_start": gref,
                       "oracle_reward": res["oracle_reward_policy"],
                       "oracle_reward_start": res["oracle_reward_reference"],
                       "kl": res["kl_to_reference"], "final_loss": loss_val})
          bar.update(1)
  bar.close()
  wall = time.perf_counter() - t0
  g["load"] = f"1-min load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end"
  write_outputs(out, rows, g, grid_name, wall)
  return rows, wall


def _mean(rows, key, **where):
  v = [r[key] for r in rows if all(r[k] == x for k, x in where.items())]
  return sum(v) / len(v) if v else float("nan")


def write_outputs(out, rows, g, grid_name, wall):
  keys = list(rows[0])
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, keys)
    w.writeheader()
    w.writerows(rows)
  starts = g["starts"]
  lines = [f"Grid `{grid_name}`: {g}; wall time {wall:.0f} s.", "",
           "Mean over tasks and sizes, oracle r* win rate vs the start / graded-oracle win "
           "rate vs the start (prefjax.testbed.graded):", "",
           "| method | " + " | ".join(starts) + " |", "|---|" + "---|" * len(starts)]
  for m in METHODS:
    cells = [f"{_mean(rows, 'win_rate', method=m, start=s):.3f} / "
             f"{_mean(rows, 'graded_win_rate', method=m, start=s):.3f}" for s in starts]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  for s in starts:
    lines += ["", f"Start `{s}`: r* win rate vs the start by training-set size (mean over "
              "tasks); last column: mean KL(policy || start)", "",
              "| method | " + " | ".join(str(z) for z in g["sizes"]) + " | KL |",
              "|---|" + "---|" * (len(g["sizes"]) + 1)]
    for m in METHODS:
      cells = [f"{_mean(rows, 'win_rate', method=m, start=s, size=z):.3f}" for z in g["sizes"]]
      lines.append(f"| {m} | " + " | ".join(cells) +
                   f" | {_mean(rows, 'kl', method=m, start=s):.2f} |")
  lines += ["", "Every run:", "",
            "| task | start | size | method | r* win | r* policy (start) | graded win | "
            "graded policy (start) | KL |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['task']} | {r['start']} | {r['size']} | {r['method']} | "
                 f"{r['win_rate']:.3f} | {r['oracle_reward']:.3f} ({r['oracle_reward_start']:.3f})"
                 f" | {r['graded_win_rate']:.3f} | {r['graded_reward']:.3f} "
                 f"({r['graded_reward_start']:.3f}) | {r['kl']:.3f} |")
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot(out, rows, g)


def plot(out, rows, g):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  starts = g["starts"]
  fig, axes = plt.subplots(2, len(starts), figsize=(4 * len(starts), 6.4), squeeze=False)
  for j, s in enumerate(starts):
    for i, (key, what) in enumerate((("win_rate", "r* win rate"),
                                     ("graded_win_rate", "graded win rate"))):
      ax = axes[i, j]
      for m in METHODS:
        ax.plot(g["sizes"], [_mean(rows, key, method=m, start=s, size=z) for z in g["sizes"]],
                marker="o", label=m)
      ax.set_xscale("log")
      ax.minorticks_off()
      ax.set_xticks(list(g["sizes"]), [str(z) for z in g["sizes"]])
      ax.axhline(0.5, color="gray", lw=0.5)
      ax.set_title(f"start: {s}", fontsize=9)
      ax.set_xlabel("preference pairs")
      ax.set_ylabel(f"{what} vs start")
  axes[0, -1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "results.png"), dpi=120)


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  logging.set_verbosity(logging.WARNING)
  starts = tuple(x for x in _STARTS.value.split(",") if x)
  bad = [x for x in starts if x not in STARTS]
  if bad or not starts:
    raise ConfigError(f"--starts: unknown start(s) {bad}; choose from {', '.join(STARTS)}")
  rows, wall = run(_OUT.value, "quick" if _QUICK.value else "default", _SEED.value, starts)
  print(f"{len(rows)} runs in {wall:.0f} s -> {_OUT.value}/results.md")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
