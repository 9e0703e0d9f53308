"""Ranking accuracy and the alignment gap of a real model before and after DPO.

Chen et al., "Preference Learning Algorithms Do Not Learn Preference Rankings" (arXiv
2405.19534), on a real checkpoint: for a finished ``scripts/train.py`` workdir of an SFT ->
DPO run on real pairs (e.g. ``experiments/real/smollm2_dpo.py``), scores the run's own
held-out pairs and its DPO training pairs (the same seeded split, rebuilt from the workdir's
config) under the reference (the SFT model) and the policy (the final model), and writes

  OUT/table1.md       Table-1-style rows, reference (before) and policy (after), held-out
                      and training pairs: R, R~ (per-token means), the idealized R* / R~*
                      (min / median / max over betas, from the reference), the gap
  OUT/flips.md        of the training pairs the reference misranks, the fraction DPO flipped
                      to correct, by DPO difficulty c = log pi_ref(y_l) - log pi_ref(y_w)
                      (quartiles of c among them), and right -> wrong flips
  OUT/flips.png       the same as a bar chart, with the histogram of c
  OUT/results.json    everything above plus the per-pair scores' summaries

The CLI is ``scripts/study_real_ranking.py``.
"""
import json
import os
import time

import numpy as np

from prefjax.errors import ConfigError
from prefjax.eval import pair_scoring
from prefjax.eval.heldout import SINGLE_LABEL_ALPHA
from prefjax.metrics import flips, ranking
from prefjax.train.data_source import DataSource
from prefjax.train.finished_run import load_run


def score(models, pairs, max_len, batch_size, progress, desc):
  """{"ref": (chosen, rejected), "policy": (...)} Scores of the pairs that fit max_len."""
  prompts, chosen, rejected, kept, dropped = pair_scoring.encode_pairs(
      models.tokenizer, pairs, max_len=max_len)
  kw = dict(max_len=max_len, batch_size=batch_size, progress=progress)
  out = {"kept": kept, "dropped": len(dropped)}
  for name, params in (("ref", models.reference), ("policy", models.policy)):
    out[name] = pair_scoring.score_pairs(models.graphdef, params, prompts, chosen, rejected,
                                         desc=f"{desc} {name}", **kw)
  return out


def table_rows(s, alpha, betas):
  """Table 1 rows of the reference (its own policy) and of the trained policy."""
  (rc, rr), (pc, pr) = s["ref"], s["policy"]
  ref = dict(ref_chosen_sums=rc.sums, ref_rejected_sums=rr.sums, ref_chosen_means=rc.means,
             ref_rejected_means=rr.means, alpha=alpha, betas=betas)
  rows = {}
  for name, (c, r) in (("before DPO (SFT = reference)", (rc, rr)), ("after DPO", (pc, pr))):
    row = ranking.table1(policy_chosen_sums=c.sums, policy_rejected_sums=r.sums,
                         policy_chosen_means=c.means, policy_rejected_means=r.means, **ref)
    rows[name] = {k: float(v) for k, v in row.items() if not hasattr(v, "shape") or not v.shape}
  return rows


def flips_by_difficulty(s, alpha):
  (rc, rr), (pc, pr) = s["ref"], s["policy"]
  c = np.asarray(flips.dpo_difficulty(rc.sums, rr.sums))
  ref_ok = np.asarray(ranking.ranking_accuracy(rc.sums, rr.sums, alpha)[0]).astype(bool)
  pol_ok = np.asarray(ranking.ranking_accuracy(pc.sums, pr.sums, alpha)[0]).astype(bool)
  wrong = ~ref_ok
  # Quartiles of c among the misranked pairs (one bin when fewer than 4); outer edges open.
  inner = np.quantile(c[wrong], [0, .25, .5, .75, 1]) if wrong.sum() >= 4 else None
  edges = inner.copy() if inner is not None else np.array([c.min(), c.max()])
  edges[0], edges[-1] = -np.inf, np.inf
  by = flips.flip_rates_by_difficulty(ref_ok, pol_ok, c, edges)
  overall = flips.flip_rates(ref_ok, pol_ok)
  return {
      "difficulty": c, "ref_correct": ref_ok, "policy_correct": pol_ok,
      "bin_ranges": ([[float(inner[i]), float(inner[i + 1])] for i in range(len(inner) - 1)]
                     if inner is not None else []),
      "num_ref_wrong": [int(x) for x in np.asarray(by["ranking/flips_by_difficulty/num_ref_wrong"])],
      "wrong_to_right": [float(x) for x in np.asarray(by["ranking/flips_by_difficulty/wrong_to_right"])],
      "num_wrong_to_right": [int(x) for x in
                             np.asarray(by["ranking/flips_by_difficulty/num_wrong_to_right"])],
      "overall_wrong_to_right": float(overall["ranking/flips/wrong_to_right"]),
      "overall_right_to_wrong": float(overall["ranking/flips/right_to_wrong"]),
      "num_pairs": int(len(c)), "num_ref_wrong_total": int(wrong.sum()),
      "num_ref_right_total": int(ref_ok.sum()),
  }


def plot(f, path, title):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
  labels = [f"[{lo:.1f}, {hi:.1f}]\nn={n}" for (lo, hi), n in
            zip(f["bin_ranges"], f["num_ref_wrong"])] or ["all"]
  a.bar(range(len(f["wrong_to_right"])), f["wrong_to_right"], color="tab:green")
  a.set_xticks(range(len(labels)))
  a.set_xticklabels(labels, fontsize=8)
  a.set_ylim(0, 1)
  a.set_xlabel("difficulty c of reference-misranked training pairs (quartiles)")
  a.set_ylabel("fraction flipped to correct by DPO")
  c = f["difficulty"]
  flipped = ~f["ref_correct"] & f["policy_correct"]
  bins = np.linspace(c.min(), c.max(), 40)
  b.hist(c, bins=bins, color="tab:blue", alpha=0.6, label="all training pairs")
  b.hist(c[flipped], bins=bins, color="tab:green", alpha=0.9, label="flipped wrong -> right")
  b.hist(c[f["ref_correct"] & ~f["policy_correct"]], bins=bins, color="tab:red", alpha=0.9,
         label="flipped right -> wrong")
  b.axvline(0, color="k", lw=1, ls="--")
  b.set_xlabel("c = log pi_ref(y_l|x) - log pi_ref(y_w|x)")
  b.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def study(workdir, out_dir, *, betas=(0.01, 0.1, 1, 5, 10), batch_size=16, progress=True):
  """Writes OUT's files (see the module docstring); returns the results.json dict."""
  t0 = time.perf_counter()
  models = load_run(workdir)
  c = models.config
  if c is None or not c.model.get("init_from"):
    raise ConfigError(f"--workdir {workdir}: not a real-model training workdir")
  data = DataSource(c, models.tokenizer)
  max_len = int(c.data.max_len)
  sets = {"held-out": data.eval_pairs(), "training": data.examples("pairwise")}
  results, md_rows = {"workdir": workdir, "models": models.description,
                      "betas": list(betas), "max_len": max_len}, {}
  scores = {}
  for name, pairs in sets.items():
    s = scores[name] = score(models, pairs, max_len, batch_size, progress, name)
    alpha = np.full(len(s["kept"]), SINGLE_LABEL_ALPHA, np.float32)
    rows = table_rows(s, alpha, betas)
    results[name] = {"num_pairs": len(s["kept"]), "dropped": s["dropped"], "rows": rows}
    md_rows.update({f"{k}, {name} ({len(s['kept'])} pairs)": v for k, v in rows.items()})
  f = flips_by_difficulty(scores["training"], np.ones(len(scores["training"]["kept"]),
                                                      np.float32))
  results["flips"] = {k: v for k, v in f.items()
                      if k not in ("difficulty", "ref_correct", "policy_correct")}
  os.makedirs(out_dir, exist_ok=True)
  beta = float(dict(c.dpo.loss_kwargs).get("beta", 0.1))
  head = (f"`python scripts/study_real_ranking.py --workdir {workdir} --out {out_dir}`"
          f"\n\n{models.description}; max_len {max_len}; idealized accuracies over betas "
          f"{', '.join(f'{b:g}' for b in betas)} (the run's beta: {beta:g}); single-label pairs "
          f"use alpha = {SINGLE_LABEL_ALPHA} as the paper's code does.\n\n")
  table = head + ranking.render_markdown(md_rows) + "\n"
  with open(os.path.join(out_dir, "table1.md"), "w") as fh:
    fh.write(table)
  fl = ["| difficulty c (quartile of misranked pairs) | misranked pairs | flipped to correct "
        "| fraction |", "|---|---|---|---|"]
  for (lo, hi), n, k, r in zip(f["bin_ranges"] or [[float("nan")] * 2], f["num_ref_wrong"],
                               f["num_wrong_to_right"], f["wrong_to_right"]):
    fl.append(f"| [{lo:.2f}, {hi:.2f}] | {n} | {k} | {r:.3f} |")
  flips_md = (f"Training pairs: {f['num_pairs']}; the reference misranks "
              f"{f['num_ref_wrong_total']}; DPO flipped {100 * f['overall_wrong_to_right']:.1f}% "
              f"of those to correct and {100 * f['overall_right_to_wrong']:.1f}% of the "
              f"{f['num_ref_right_total']} correctly ranked ones to wrong.\n\n" + "\n".join(fl)
              + "\n")
  with open(os.path.join(out_dir, "flips.md"), "w") as fh:
    fh.write(flips_md)
  plot(f, os.path.join(out_dir, "flips.png"),
       f"{os.path.basename(os.path.normpath(workdir))}: DPO flips of training pairs "
       "by difficulty")
  results["seconds"] = time.perf_counter() - t0
  with open(os.path.join(out_dir, "results.json"), "w") as fh:
    json.dump(results, fh, indent=2)
  print(table + "\n" + flips_md + f"\n{results['seconds']:.0f} s", flush=True)
  return results
