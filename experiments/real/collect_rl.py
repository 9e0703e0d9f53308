"""Seeds of a real-model RL / online run -> one table: held-out verified accuracy of the
reference and of the policy (before -> after), win rate, KL, format rate, length; mean +-
standard error over seeds.

  python experiments/real/collect_rl.py --runs 'runs/grpo_s*' --out runs/grpo_table

Writes OUT.json (one row per run and the aggregate), OUT.md and OUT.png (the verified
accuracy of each seed's training samples by iteration / round, with the held-out greedy
accuracy of reference and policy), and prints the table. A difference inside two standard
errors is reported as no difference.
"""
from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from prefjax.studies.real.report import mean_se  # noqa: E402

_RUNS = flags.DEFINE_string("runs", None, "Glob (or comma-separated list) of workdirs.",
                            required=True)
_OUT = flags.DEFINE_string("out", None, "Output path prefix (OUT.json, OUT.md).", required=True)

KEYS = ("verified_accuracy/reference", "verified_accuracy/policy", "win_rate_vs_reference",
        "kl_to_reference", "format_rate/reference", "format_rate/policy",
        "lenient_accuracy/reference", "lenient_accuracy/policy", "length/reference",
        "length/policy")


def collect(workdirs):
  rows = []
  for w in workdirs:
    path = os.path.join(w, "summary.json")
    if not os.path.exists(path):
      print(f"skipping {w}: no summary.json", file=sys.stderr)
      continue
    s = json.load(open(path))
    cfg = json.load(open(os.path.join(w, "config.json")))
    rows.append(dict({k: s[f"eval/{k}"] for k in KEYS if f"eval/{k}" in s}, run=w,
                     seed=cfg.get("seed"), n=s.get("eval/judge/samples"),
                     seconds=s.get("wall_seconds")))
  if not rows:
    raise SystemExit("no finished runs")
  agg = {k: mean_se([r[k] for r in rows]) for k in KEYS if k in rows[0]}
  gain = [r["verified_accuracy/policy"] - r["verified_accuracy/reference"] for r in rows]
  agg["gain"] = mean_se(gain)
  return rows, agg


def table(rows, agg) -> str:
  m, se = agg["gain"]
  verdict = ("no difference (inside two standard errors)" if not abs(m) > 2 * se else
             ("improved" if m > 0 else "got worse"))
  lines = ["| seed | reference | policy | win rate | KL | format (ref -> policy) | tokens |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['seed']} | {r['verified_accuracy/reference']:.3f} | "
                 f"{r['verified_accuracy/policy']:.3f} | {r['win_rate_vs_reference']:.3f} | "
                 f"{r['kl_to_reference']:.3f} | {r['format_rate/reference']:.2f} -> "
                 f"{r['format_rate/policy']:.2f} | {r['length/policy']:.1f} |")
  f = lambda k: f"{agg[k][0]:.3f} +- {agg[k][1]:.3f}"
  lines.append(f"| mean +- SE ({len(rows)} seeds) | {f('verified_accuracy/reference')} | "
               f"{f('verified_accuracy/policy')} | {f('win_rate_vs_reference')} | "
               f"{f('kl_to_reference')} | | |")
  lines.append("")
  lines.append(f"policy - reference verified accuracy: {m:+.3f} +- {se:.3f} ({verdict}; "
               f"n = {int(rows[0]['n'])} held-out prompts per run)")
  return "\n".join(lines)


def _curve(workdir):
  """(iterations, sample verified accuracy) from a run's metrics.jsonl (one point per
  RL iteration or online round)."""
  points = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as fh:
    for line in fh:
      d = json.loads(line)
      it = d.get("rl/iteration", d.get("online/round"))
      if it is not None and "rollout/verified_accuracy" in d:
        points.setdefault(int(it), d["rollout/verified_accuracy"])
  its = sorted(points)
  return its, [points[i] for i in its]


def plot(workdirs, rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.6))
  for w, r in zip(workdirs, rows):
    its, acc = _curve(w)
    line, = ax.plot(its, acc, marker=".", lw=1, label=f"seed {r['seed']}: samples (T > 0)")
    if its:
      ax.scatter([its[-1] + 1], [r["verified_accuracy/policy"]], color=line.get_color(),
                 marker="*", s=90, zorder=3)
  ref = np.mean([r["verified_accuracy/reference"] for r in rows])
  ax.axhline(ref, color="gray", ls="--", lw=1, label=f"reference, held-out greedy ({ref:.3f})")
  ax.scatter([], [], color="k", marker="*", label="policy, held-out greedy")
  ax.set_xlabel("iteration / round")
  ax.set_ylabel("verified accuracy")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  runs = (sorted(p for p in glob.glob(_RUNS.value) if os.path.isdir(p)) if any(ch in _RUNS.value for ch in "*?[")
          else _RUNS.value.split(","))
  runs = [w for w in runs if os.path.exists(os.path.join(w, "summary.json"))] or runs
  rows, agg = collect(runs)
  text = table(rows, agg)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + ".json", "w") as fh:
    json.dump({"runs": rows, "mean_se": agg}, fh, indent=2)
  with open(_OUT.value + ".md", "w") as fh:
    fh.write(text + "\n")
  plot(runs, rows, _OUT.value + ".png")
  print(text)


if __name__ == "__main__":
  app.run(main)
