"""Study: multi-sample preference optimisation (mDPO, mIPO; Wang et al., arXiv 2410.12138).

(a) Population task (pick): group preferences (k in {2, 4}; preferred group = closer to
    uniform over the offered letters, BT draw) for mDPO / mIPO; DPO / IPO get the k = 1
    view of the same process (one sample per side). From the SFT model (biased towards the
    first letter), 256 samples per held-out prompt measure balance: entropy of the empirical
    distribution, TV distance to uniform over the offered letters, and validity.
(b) Label-noise sweep on sort: eps in {0, 0.1, 0.2, 0.3, 0.4}; mDPO / mIPO on groups of k
    proposals (preferred group by BT on mean oracle reward) vs DPO / IPO on pairs; oracle
    win rate vs the SFT model.

  python scripts/study_multi_sample.py --out experiments/multi_sample/quick --quick
Writes population.csv/.md, noise.csv/.md, results.png under --out.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from absl import app, flags, logging
from tqdm.auto import tqdm

from prefjax.cli import main_guard
from prefjax.errors import ConfigError
from prefjax.data import pipeline
from prefjax.studies.align_grid import Grid
from prefjax.testbed import world
from prefjax.testbed.tasks import get_task
from prefjax.train.objective import make_objective

_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_QUICK = flags.DEFINE_bool("quick", False, "The small `quick` grid instead of `default`.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the testbed world and models.")
_LR = flags.DEFINE_float("lr", None, "override the alignment lr")
_ALIGN_STEPS = flags.DEFINE_integer("align_steps", None, "override alignment steps")

METHODS = [("dpo", 1), ("ipo", 1), ("mdpo", 2), ("mdpo", 4), ("mipo", 2), ("mipo", 4)]
NOISES = (0.0, 0.1, 0.2, 0.3, 0.4)
GRIDS = {
    "quick": dict(n_layers=1, dim=64, sft_steps=300, align_steps=40, batch=16, n_prompts=256,
                  n_pop_prompts=16, n_pop_samples=256, n_eval=64, n_eval_samples=4, beta=0.3,
                  lr=5e-4),
    "default": dict(n_layers=1, dim=64, sft_steps=500, align_steps=80, batch=16,
                    n_prompts=1000, n_pop_prompts=32, n_pop_samples=256, n_eval=128,
                    n_eval_samples=4, beta=0.3, lr=5e-4),
}
PICK_SFT_ERROR = 0.1   # pick demos: mostly valid letters, biased to the first one


def _label(loss, k):
  return loss if k == 1 else f"{loss} k={k}"


def _data(grid, wcfg, loss, k, n):
  """(objective, examples, encoder) for a method; k = 1 means pairs."""
  if k == 1:
    if wcfg.tasks == ("pick",):   # the k = 1 view of the group process
      ex = world.groups_as_pairs(world.group_preferences(wcfg, n, k=1))
    else:
      ex = world.preference_pairs(wcfg, n)
    return ex, pipeline.encode_pair(grid.tok, grid.max_len)
  ex = world.group_preferences(dataclasses.replace(wcfg, group_size=k), n)
  return ex, pipeline.encode_group(grid.tok, grid.max_len, k)


def population_metrics(prompts, samples):
  task = get_task("pick")
  ent, tv, valid = [], [], []
  for p, ys in zip(prompts, samples):
    ent.append(task.entropy(ys))
    tv.append(-task.population_score(p, ys))
    valid.append(np.mean([task.reward(p, y) for y in ys]))
  return float(np.mean(ent)), float(np.mean(tv)), float(np.mean(valid))


def run(out, grid_name, seed=0, overrides=None):
  g = dict(GRIDS[grid_name], **(overrides or {}))
  os.makedirs(out, exist_ok=True)
  t0, load0 = time.perf_counter(), os.getloadavg()[0]
  grid = Grid.make(n_layers=g["n_layers"], dim=g["dim"], seed=seed)
  bar = tqdm(total=len(METHODS) * (1 + len(NOISES)), desc="multi-sample", dynamic_ncols=True)

  # One SFT model for the whole study: pick demos (mostly valid, biased towards the first
  # letter) mixed with sort demos (40% flawed); every run of (a) and (b) starts from it.
  wcfg = world.WorldConfig(tasks=("pick",), seed=seed, sft_error_rate=PICK_SFT_ERROR)
  base = world.WorldConfig(tasks=("sort",), seed=seed)
  demos = world.sft_examples(wcfg, 1500) + world.sft_examples(base, 1500)
  sft = grid.sft(grid.init_params, demos, steps=g["sft_steps"], batch_size=32, lr=3e-3,
                 warmup=10)

  # (a) population task.
  prompts = [p for _, p in world.eval_prompts(wcfg, g["n_pop_prompts"])]
  opts = [get_task("pick").options(p) for p in prompts]
  max_ent = float(np.mean([math.log(len(o)) for o in opts]))
  e, t, v = population_metrics(prompts, grid.samples(sft, prompts, n_samples=g["n_pop_samples"]))
  pop = [{"method": "sft (start)", "entropy": e, "tv_to_uniform": t, "validity": v,
          "max_entropy": max_ent}]
  for loss, k in METHODS:
    ex, enc = _data(grid, wcfg, loss, k, g["n_prompts"])
    obj = make_objective(loss, {"beta": g["beta"]})
    pol, _ = grid.train(sft, obj, ex, enc, steps=g["align_steps"], batch_size=g["batch"],
                        lr=g["lr"], ref_params=sft)
    e, t, v = population_metrics(prompts, grid.samples(pol, prompts,
                                                       n_samples=g["n_pop_samples"]))
    pop.append({"method": _label(loss, k), "entropy": e, "tv_to_uniform": t, "validity": v,
                "max_entropy": max_ent})
    bar.update(1)

  # (b) label-noise sweep on sort.
  noise_rows = []
  sft_sort = sft
  eval_p = world.eval_prompts(base, g["n_eval"])
  for eps in NOISES:
    wcfg = dataclasses.replace(base, label_noise=eps)
    for loss, k in METHODS:
      ex, enc = _data(grid, wcfg, loss, k, g["n_prompts"])
      obj = make_objective(loss, {"beta": g["beta"]})
      pol, _ = grid.train(sft_sort, obj, ex, enc, steps=g["align_steps"],
                          batch_size=g["batch"], lr=g["lr"], ref_params=sft_sort)
      res, _ = grid.evaluate(pol, sft_sort, eval_p, n_samples=g["n_eval_samples"])
      noise_rows.append({"label_noise": eps, "method": _label(loss, k),
                         "win_rate": res["win_rate_vs_reference"],
                         "oracle_reward": res["oracle_reward_policy"],
                         "oracle_reward_start": res["oracle_reward_reference"],
                         "kl": res["kl_to_reference"]})
      bar.update(1)
  bar.close()
  wall = time.perf_counter() - t0
  load = f"1-min load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end"
  write(out, pop, noise_rows, g, grid_name, wall, load)
  return wall


def _csv(path, rows):
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def write(out, pop, noise_rows, g, grid_name, wall, load=""):
  _csv(os.path.join(out, "population.csv"), pop)
  _csv(os.path.join(out, "noise.csv"), noise_rows)
  lines = [f"Grid `{grid_name}`: {g}; wall time {wall:.0f} s ({load}).", "",
           f"(a) pick: {g['n_pop_samples']} samples x {g['n_pop_prompts']} held-out prompts "
           f"(max entropy log|options| = {pop[0]['max_entropy']:.3f}).", "",
           "| method | entropy | TV to uniform | validity |", "|---|---|---|---|"]
  lines += [f"| {r['method']} | {r['entropy']:.3f} | {r['tv_to_uniform']:.3f} | "
            f"{r['validity']:.3f} |" for r in pop]
  methods = [_label(l, k) for l, k in METHODS]
  lines += ["", "(b) sort: oracle win rate vs SFT by label noise", "",
            "| method | " + " | ".join(f"eps={e}" for e in NOISES) + " |",
            "|---|" + "---|" * len(NOISES)]
  for m in methods:
    cells = [f"{r['win_rate']:.3f}" for e in NOISES for r in noise_rows
             if r["method"] == m and r["label_noise"] == e]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines += ["", "(b) sort: mean oracle reward of the policy (SFT start: "
            f"{noise_rows[0]['oracle_reward_start']:.3f}) and KL to SFT by label noise", "",
            "| method | " + " | ".join(f"eps={e}" for e in NOISES) + " |",
            "|---|" + "---|" * len(NOISES)]
  for m in methods:
    cells = [f"{r['oracle_reward']:.3f} / {r['kl']:.2f}" for e in NOISES for r in noise_rows
             if r["method"] == m and r["label_noise"] == e]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write("\n".join(lines) + "\n")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.5))
  names = [r["method"] for r in pop]
  a1.bar(names, [r["tv_to_uniform"] for r in pop])
  a1.set_ylabel("TV to uniform (lower = more balanced)")
  a1.tick_params(axis="x", rotation=45, labelsize=7)
  a1.set_title("pick: population balance")
  for m in methods:
    a2.plot(NOISES, [r["win_rate"] for r in noise_rows if r["method"] == m], marker="o",
            label=m)
  a2.axhline(0.5, color="gray", lw=0.5)
  a2.set_xlabel("label noise eps")
  a2.set_ylabel("win rate vs SFT")
  a2.set_title("sort: label-noise sweep")
  a2.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "results.png"), dpi=120)


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  logging.set_verbosity(logging.WARNING)
  over = {k: v for k, v in (("lr", _LR.value), ("align_steps", _ALIGN_STEPS.value))
          if v is not None}
  if any(v <= 0 for v in over.values()):
    raise ConfigError(f"--lr / --align_steps must be positive, got {over}")
  wall = run(_OUT.value, "quick" if _QUICK.value else "default", _SEED.value, over)
  print(f"done in {wall:.0f} s -> {_OUT.value}/results.md")


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
