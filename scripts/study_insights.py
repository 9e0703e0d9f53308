"""Study: 'Insights into Alignment' (Saeidi et al., arXiv 2404.14723) on the testbed.

methods {SFT only, DPO, IPO, KTO, CPO, ORPO, SimPO} x starting points {SFT then align,
base model directly, instruction-tuned on other tasks} x training-set sizes x tasks.
Metrics (held-out prompts, exact oracle): win rate vs the starting model, oracle reward,
KL(policy || start). Starting models are trained once per task and reused; every method's
step is compiled once for the whole grid. "SFT only" = continued SFT on the chosen
responses of the same preference set (same steps), the paper's SFT baseline.

  python scripts/study_insights.py --out experiments/insights_alignment/quick --quick
  python scripts/study_insights.py --out experiments/insights_alignment/full
Writes results.csv, results.md (table), results.png under --out.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm.auto import tqdm

from prefjax.cli import main_guard
from prefjax.data import pipeline
from prefjax.studies.align_grid import Grid
from prefjax.testbed import world
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

GRIDS = {
    "quick": dict(tasks=("sort", "add", "pick"), sizes=(32, 320), n_layers=1, dim=64,
                  sft_steps=120, align_steps=12, batch=16, n_eval=64),
    "default": dict(tasks=("sort", "add", "pick"), sizes=(64, 200, 640), n_layers=1, dim=64,
                    sft_steps=300, align_steps=40, batch=16, n_eval=128),
}


def run(out, grid_name, seed=0):
  g = GRIDS[grid_name]
  os.makedirs(out, exist_ok=True)
  t0 = time.perf_counter()
  grid = Grid.make(n_layers=g["n_layers"], dim=g["dim"], seed=seed)
  tok = grid.tok
  rows = []
  total = len(g["tasks"]) * len(STARTS) * len(g["sizes"]) * len(METHODS)
  bar = tqdm(total=total, desc="insights grid", dynamic_ncols=True)
  for task in g["tasks"]:
    wcfg = world.WorldConfig(tasks=(task,), seed=seed)
    starts = {"base": grid.init_params}
    for name, sft_task in (("sft", task), ("other_tasks", OTHER[task])):
      demos = world.sft_examples(dataclasses.replace(wcfg, tasks=(sft_task,)), 2000)
      starts[name] = grid.sft(grid.init_params, demos, steps=g["sft_steps"], batch_size=32,
                              lr=3e-3, warmup=10)
    prompts = world.eval_prompts(wcfg, g["n_eval"])
    for start in STARTS:
      ref = starts[start]
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
          res, _ = grid.evaluate(pol, ref, prompts)
          rows.append({"task": task, "start": start, "size": size, "method": method,
                       "win_rate": res["win_rate_vs_reference"],
                       "oracle_reward": res["oracle_reward_policy"],
                       "oracle_reward_start": res["oracle_reward_reference"],
                       "kl": res["kl_to_reference"], "final_loss": loss_val})
          bar.update(1)
  bar.close()
  wall = time.perf_counter() - t0
  write_outputs(out, rows, g, grid_name, wall)
  return rows, wall


def write_outputs(out, rows, g, grid_name, wall):
  keys = list(rows[0])
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, keys)
    w.writeheader()
    w.writerows(rows)
  lines = [f"Grid `{grid_name}`: {g}; wall time {wall:.0f} s.", "",
           "| task | start | size | method | win rate vs start | oracle reward (start) | KL |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['task']} | {r['start']} | {r['size']} | {r['method']} | "
                 f"{r['win_rate']:.3f} | {r['oracle_reward']:.3f} ({r['oracle_reward_start']:.3f})"
                 f" | {r['kl']:.3f} |")
  # Mean over tasks and sizes: method x start.
  lines += ["", "Mean win rate vs start over tasks and sizes:", "",
            "| method | " + " | ".join(STARTS) + " |", "|---|" + "---|" * len(STARTS)]
  for m in METHODS:
    cells = []
    for s in STARTS:
      v = [r["win_rate"] for r in rows if r["method"] == m and r["start"] == s]
      cells.append(f"{sum(v) / len(v):.3f}")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot(out, rows, g)


def plot(out, rows, g):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(STARTS), figsize=(4 * len(STARTS), 3.2), sharey=True)
  for ax, s in zip(axes, STARTS):
    for m in METHODS:
      ys = []
      for size in g["sizes"]:
        v = [r["win_rate"] for r in rows if r["method"] == m and r["start"] == s
             and r["size"] == size]
        ys.append(sum(v) / len(v))
      ax.plot(g["sizes"], ys, marker="o", label=m)
    ax.set_xscale("log")
    ax.axhline(0.5, color="gray", lw=0.5)
    ax.set_title(f"start: {s}")
    ax.set_xlabel("preference pairs")
  axes[0].set_ylabel("win rate vs start (mean over tasks)")
  axes[-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "results.png"), dpi=120)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--seed", type=int, default=0)
  a = ap.parse_args()
  rows, wall = run(a.out, "quick" if a.quick else "default", a.seed)
  print(f"{len(rows)} runs in {wall:.0f} s -> {a.out}/results.md")


if __name__ == "__main__":
  main_guard(main)
