"""Results of a study: rows (one per run and seed) -> ``results.json``, ``results.csv``, a
markdown table of mean +- standard error per arm, a verdict per claim and a plot.

A row is a flat dict: the arm's keys (``method``, ``noise``, ...), ``seed`` and metrics
(floats). ``summarize`` groups rows by the arm keys and reports each metric as mean +- SE over
seeds; ``compare`` turns a difference of two arms into a verdict that counts a difference
inside two standard errors as none.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Callable, Sequence

import numpy as np


def mean_se(xs) -> tuple[float, float]:
  """(mean, standard error of the mean); SE is NaN for a single value."""
  xs = np.asarray([x for x in xs if x is not None], np.float64)
  if not len(xs):
    return float("nan"), float("nan")
  se = xs.std(ddof=1) / np.sqrt(len(xs)) if len(xs) > 1 else float("nan")
  return float(xs.mean()), float(se)


def verdict(m: float, se: float, *, claim_sign: int = 1) -> str:
  """``confirmed`` when the difference ``m`` has the claimed sign and exceeds two standard
  errors, ``reversed`` when it exceeds them with the other sign, else ``not confirmed``."""
  if not np.isfinite(se) or abs(m) <= 2 * se:
    return "not confirmed"
  return "confirmed" if np.sign(m) == claim_sign else "reversed"


def summarize(rows: Sequence[dict], keys: Sequence[str], metrics: Sequence[str]) -> list[dict]:
  """One dict per arm (distinct values of ``keys``, in first-seen order): the keys, ``n``
  (seeds) and ``METRIC`` / ``METRIC_se`` for each metric."""
  arms: dict = {}
  for r in rows:
    arms.setdefault(tuple(r.get(k) for k in keys), []).append(r)
  out = []
  for arm, rs in arms.items():
    d = dict(zip(keys, arm), n=len(rs))
    for m in metrics:
      d[m], d[m + "_se"] = mean_se([r.get(m) for r in rs])
    out.append(d)
  return out


def paired_difference(rows: Sequence[dict], metric: str, a: dict, b: dict) -> tuple[float, float, int]:
  """Mean +- SE over seeds of ``metric``(arm a) - ``metric``(arm b), paired by seed; arms
  are given as {key: value} filters."""
  def pick(f):
    return {r["seed"]: r[metric] for r in rows
            if all(r.get(k) == v for k, v in f.items()) and r.get(metric) is not None}
  pa, pb = pick(a), pick(b)
  seeds = sorted(set(pa) & set(pb))
  m, se = mean_se([pa[s] - pb[s] for s in seeds])
  return m, se, len(seeds)


def claim_line(name: str, rows, metric: str, a: dict, b: dict, *, claim_sign: int = 1) -> dict:
  """A verdict on "``metric`` of a is above (claim_sign=1) / below (-1) that of b"."""
  m, se, n = paired_difference(rows, metric, a, b)
  return {"claim": name, "metric": metric, "a": a, "b": b, "difference": m, "se": se,
          "seeds": n, "verdict": verdict(m, se, claim_sign=claim_sign)}


def claim_value(name: str, rows, metric: str, where: dict, *, against: float = 0.0,
                claim_sign: int = 1) -> dict:
  """A verdict on "``metric`` of the rows matching ``where`` is above (claim_sign=1) / below
  (-1) ``against``" (mean +- SE over seeds)."""
  xs = [r[metric] - against for r in rows
        if all(r.get(k) == v for k, v in where.items()) and r.get(metric) is not None]
  m, se = mean_se(xs)
  return {"claim": name, "metric": metric, "a": where, "b": {"value": against},
          "difference": m, "se": se, "seeds": len(xs),
          "verdict": verdict(m, se, claim_sign=claim_sign)}


def failed_to_train(table: Sequence[dict], keys: Sequence[str], metric: str = "gain") -> list[str]:
  """Notes naming the arms whose ``metric`` (their gain over their own start) is below 0 by
  more than two standard errors: such a baseline failed to train, and a comparison with it
  needs more tuning first."""
  out = []
  for d in table:
    m, se = d.get(metric), d.get(metric + "_se")
    if m is not None and np.isfinite(m) and np.isfinite(se) and m + 2 * se < 0:
      arm = ", ".join(f"{k}={d[k]}" for k in keys)
      out.append(f"FAILED TO TRAIN ({arm}): {metric} {m:+.3f} +- {se:.3f}, below its start; "
                 "tune it further before comparing")
  return out


def _fmt(v) -> str:
  if isinstance(v, float):
    return "nan" if not np.isfinite(v) else f"{v:.3f}"
  return str(v)


def markdown(title: str, table: Sequence[dict], keys: Sequence[str], metrics: Sequence[str],
             claims: Sequence[dict] = (), notes: Sequence[str] = ()) -> str:
  lines = [f"# {title}", ""]
  lines += list(notes) + ([""] if notes else [])
  lines.append("| " + " | ".join(list(keys) + ["n"] + list(metrics)) + " |")
  lines.append("|" + "---|" * (len(keys) + 1 + len(metrics)))
  for d in table:
    cells = [_fmt(d[k]) for k in keys] + [str(d["n"])]
    cells += [f"{_fmt(d[m])} +- {_fmt(d[m + '_se'])}" for m in metrics]
    lines.append("| " + " | ".join(cells) + " |")
  if claims:
    lines += ["", "| claim | difference (mean +- SE over seeds; two arms paired by seed) | verdict |",
              "|---|---|---|"]
    for c in claims:
      lines.append(f"| {c['claim']} | {c['difference']:+.3f} +- {_fmt(c['se'])} "
                   f"({c['seeds']} seeds) | {c['verdict']} |")
  return "\n".join(lines) + "\n"


def write(out: str, *, study: str, title: str, rows: Sequence[dict], keys: Sequence[str],
          metrics: Sequence[str], claims: Sequence[dict] = (), settings: dict | None = None,
          notes: Sequence[str] = (), extra: dict | None = None,
          plot: Callable | None = None) -> dict:
  """Writes ``out/results.json`` (rows, per-arm summary, claims, settings), ``results.csv``,
  ``results.md`` and, with ``plot(table, path)``, ``results.png``; returns the json."""
  os.makedirs(out, exist_ok=True)
  table = summarize(rows, keys, metrics)
  if "gain" in metrics:
    notes = list(notes) + failed_to_train(table, keys)
  doc = {"study": study, "title": title, "settings": settings or {}, "rows": list(rows),
         "summary": table, "claims": list(claims), "notes": list(notes)}
  if extra:
    doc.update(extra)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(doc, f, indent=2, default=float)
  fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in keys and k != "seed", k))
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields)
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k) for k in fields})
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown(title, table, keys, metrics, claims, notes))
  if plot is not None:
    import matplotlib
    if "ipykernel" not in sys.modules:       # a notebook keeps its inline backend
      matplotlib.use("Agg")
    plot(table, os.path.join(out, "results.png"))
  return doc


def show(out: str) -> dict | None:
  """A written study, for a notebook: its markdown (the table and the verdicts) and its plot;
  returns results.json, or None (said in one line) when ``out`` has no results."""
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    print(f"no study results under {out} (scripts/study_real.py --study NAME --out {out})")
    return None
  with open(path) as f:
    doc = json.load(f)
  with open(os.path.join(out, "results.md")) as f:
    text = f.read()
  png = os.path.join(out, "results.png")
  try:
    from IPython import get_ipython
    from IPython.display import Image, Markdown, display
  except ImportError:
    get_ipython = None
  if get_ipython is not None and get_ipython() is not None:
    display(Markdown(text))
    if os.path.exists(png):
      display(Image(filename=png))
  else:
    print(text)
  return doc


def bar_plot(table: Sequence[dict], path: str, *, group: str, series: str, metric: str,
             ylabel: str, reference: float | None = None) -> None:
  """Bars of ``metric`` (+- SE) with ``group`` on the x axis and one bar per ``series``."""
  import matplotlib.pyplot as plt
  groups = list(dict.fromkeys(d[group] for d in table))
  names = list(dict.fromkeys(d[series] for d in table))
  width = 0.8 / max(len(names), 1)
  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * max(1, len(names) / 3)), 3.6))
  for j, n in enumerate(names):
    xs, ys, es = [], [], []
    for i, g in enumerate(groups):
      d = next((d for d in table if d[group] == g and d[series] == n), None)
      if d is not None:
        xs.append(i + (j - (len(names) - 1) / 2) * width)
        ys.append(d[metric])
        es.append(0.0 if not np.isfinite(d[metric + "_se"]) else d[metric + "_se"])
    ax.bar(xs, ys, width, yerr=es, capsize=2, label=str(n))
  if reference is not None:
    ax.axhline(reference, color="gray", ls="--", lw=1, label="start model")
  ax.set_xticks(range(len(groups)), [str(g) for g in groups])
  ax.set_xlabel(group)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def line_plot(table: Sequence[dict], path: str, *, x: str, series: str, metric: str,
              ylabel: str, reference: float | None = None) -> None:
  """``metric`` (+- SE) against ``x``, one line per ``series``."""
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for n in dict.fromkeys(d[series] for d in table):
    ds = sorted((d for d in table if d[series] == n), key=lambda d: d[x])
    es = [0.0 if not np.isfinite(d[metric + "_se"]) else d[metric + "_se"] for d in ds]
    ax.errorbar([d[x] for d in ds], [d[metric] for d in ds], yerr=es, marker="o", capsize=3,
                label=str(n))
  if reference is not None:
    ax.axhline(reference, color="gray", ls="--", lw=1, label="start model")
  ax.set_xlabel(x)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
