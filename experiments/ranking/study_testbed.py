"""Testbed studies of Chen et al., "Preference Learning Algorithms Do Not Learn Preference
Rankings" (arXiv 2405.19534), over the DPO checkpoints of ``experiments/ranking/dpo.py`` runs.

  (a) flips: which reference-misranked training pairs DPO flips, binned by the difficulty
      c = log pi_ref(y_l|x) - log pi_ref(y_w|x), and observed vs idealized ranking accuracy
      (exact alpha) at every checkpoint.
  (b) gamma: ranking accuracy vs oracle win rate over training for several gamma of
      ``dpo_gamma``, and their correlation early and late in training.

  python experiments/ranking/study_testbed.py flips --workdir /tmp/rank_runs/dpo \\
      --out experiments/ranking
  python experiments/ranking/study_testbed.py gamma \\
      --workdirs 0=/tmp/rank_runs/g0,0.5=/tmp/rank_runs/g0.5,1=/tmp/rank_runs/dpo \\
      --out experiments/ranking

The study (flips or gamma) is the one positional argument; everything else is an absl flag.
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the checkout first

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from absl import app, flags, logging

from prefjax.cli import main_guard
from prefjax.errors import ConfigError
from prefjax.eval import pair_scoring, testbed_eval
from prefjax.metrics import flips, ranking
from prefjax.testbed import world
from prefjax.train.data_source import world_config
from prefjax.train.finished_run import checkpoint_params, load_run

STUDIES = ("flips", "gamma")
_WORKDIR = flags.DEFINE_string("workdir", None, "flips: the DPO run's workdir.")
_WORKDIRS = flags.DEFINE_string("workdirs", None,
                                "gamma: comma-separated GAMMA=WORKDIR, one per dpo_gamma run.")
_OUT = flags.DEFINE_string("out", "experiments/ranking", "Output directory.")
_N_PROMPTS = flags.DEFINE_integer("n_prompts", 256, "gamma: win-rate prompts")
_N_SAMPLES = flags.DEFINE_integer("n_samples", 2, "gamma: samples per prompt")

EDGES = [0.0, 1.0, 2.0, 4.0, 8.0, np.inf]  # difficulty bins of reference-misranked pairs


def _checkpoints(workdir):
  d = Path(workdir) / "checkpoints" / "dpo"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


def _scores(models, pairs, max_len, params):
  p, c, r, kept, dropped = pair_scoring.encode_pairs(models.tokenizer, pairs, max_len=max_len)
  assert not dropped, dropped
  sc, sr = pair_scoring.score_pairs(models.graphdef, params, p, c, r, max_len=max_len,
                                    batch_size=128)
  return sc, sr


def study_flips(workdir, out, n_train=1024):
  models = load_run(workdir, need=("reference",))
  cfg = models.config
  wcfg = world_config(cfg, "testbed")
  max_len = cfg.data.max_len
  beta = float(cfg.dpo.loss_kwargs.beta)
  splits = {"train": world.preference_pairs(wcfg, cfg.testbed.n_pairs)[:n_train],
            "heldout": world.preference_pairs(wcfg, cfg.testbed.n_eval_pairs, split="eval")}
  steps = _checkpoints(workdir)
  res = {"workdir": workdir, "beta": beta, "steps": [0] + steps, "bin_edges": EDGES}
  for name, pairs in splits.items():
    alpha = np.array([p["alpha"] for p in pairs], np.float32)
    ref_c, ref_r = _scores(models, pairs, max_len, models.reference)
    c = np.asarray(flips.dpo_difficulty(ref_c.sums, ref_r.sums))
    ref_correct = np.asarray(ranking.ranking_accuracy(ref_c.sums, ref_r.sums)[0])
    ideal = ranking.idealized_ranking_accuracy(
        ref_chosen_sums=ref_c.sums, ref_rejected_sums=ref_r.sums, ref_chosen_means=ref_c.means,
        ref_rejected_means=ref_r.means, alpha=alpha, betas=ranking.BETAS + (beta,))
    rows, correct_k = [], [ref_correct]
    for step in [0] + steps:
      params = models.reference if step == 0 else checkpoint_params(
          Path(workdir) / "checkpoints" / "dpo" / str(step))
      pc, pr = (ref_c, ref_r) if step == 0 else _scores(models, pairs, max_len, params)
      if step:
        correct_k.append(np.asarray(ranking.ranking_accuracy(pc.sums, pr.sums)[0]))
      t1 = ranking.table1(policy_chosen_sums=pc.sums, policy_rejected_sums=pr.sums,
                          policy_chosen_means=pc.means, policy_rejected_means=pr.means,
                          ref_chosen_sums=ref_c.sums, ref_rejected_sums=ref_r.sums,
                          ref_chosen_means=ref_c.means, ref_rejected_means=ref_r.means,
                          alpha=alpha)
      rows.append({"step": step,
                   "label_accuracy": float(correct_k[-1].mean()),
                   **{k: float(v) for k, v in t1.items()}})
    fb = flips.flip_rates_by_difficulty(ref_correct, np.stack(correct_k), c, np.array(EDGES))
    res[name] = {
        "num_pairs": len(pairs), "per_step": rows,
        "idealized_accuracy_at_train_beta": float(
            ideal[f"ranking/idealized_accuracy/beta_{beta:g}"]),
        "idealized": {k: float(v) for k, v in ideal.items()},
        "difficulty_quantiles_10_50_90": [float(q) for q in np.quantile(c, [.1, .5, .9])],
        "fraction_ref_misranked": float(np.mean(ref_correct == 0)),
        "flips_by_difficulty": {k.split("/")[-1]: np.asarray(v).tolist() for k, v in fb.items()},
    }
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "study_a_flips.json"), "w") as f:
    json.dump(res, f, indent=1)
  _plot_flips(res, os.path.join(out, "study_a_flips.png"))
  print(_markdown_flips(res))
  return res


def _bin_labels():
  return [f"[{a:g}, {b:g})" for a, b in zip(EDGES[:-1], EDGES[1:])]


def _plot_flips(res, path):
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  tr = res["train"]["flips_by_difficulty"]
  w2r = np.array(tr["wrong_to_right"])  # (K, M)
  for m, lab in enumerate(_bin_labels()):
    axes[0].plot(res["steps"], w2r[:, m], marker="o",
                 label=f"c in {lab} (n={tr['num_ref_wrong'][m]})")
  axes[0].set_xlabel("DPO step")
  axes[0].set_ylabel("fraction of ref-misranked train pairs flipped")
  axes[0].legend(fontsize=8)
  for name, ls in (("train", "-"), ("heldout", "--")):
    steps = [r["step"] for r in res[name]["per_step"]]
    axes[1].plot(steps, [r["ranking/accuracy"] for r in res[name]["per_step"]], ls,
                 marker="o", label=f"{name}: observed R (exact alpha)")
    axes[1].axhline(res[name]["idealized_accuracy_at_train_beta"], ls=ls, color="gray")
    axes[1].plot(steps, [r["label_accuracy"] for r in res[name]["per_step"]], ls,
                 marker="x", label=f"{name}: label accuracy")
  axes[1].set_xlabel("DPO step")
  axes[1].set_ylabel("ranking accuracy (gray: idealized R*, beta of training)")
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _markdown_flips(res):
  tr = res["train"]["flips_by_difficulty"]
  lines = ["| step | " + " | ".join(f"c in {b}" for b in _bin_labels()) + " |",
           "|---|" + "---|" * len(_bin_labels()),
           "| n ref-misranked | " + " | ".join(str(n) for n in tr["num_ref_wrong"]) + " |"]
  for k, step in enumerate(res["steps"]):
    lines.append(f"| {step} | " + " | ".join(
        f"{100 * x:.1f}" for x in tr["wrong_to_right"][k]) + " |")
  lines += ["", "| split | step | label acc | R (exact alpha) | R* median | R*(beta_train) "
            "| R~ | R~* median |", "|---|---|---|---|---|---|---|---|"]
  for name in ("train", "heldout"):
    for r in res[name]["per_step"]:
      lines.append(
          f"| {name} | {r['step']} | {100 * r['label_accuracy']:.1f} | "
          f"{100 * r['ranking/accuracy']:.1f} | "
          f"{100 * r['ranking/idealized_accuracy/median']:.1f} | "
          f"{100 * res[name]['idealized_accuracy_at_train_beta']:.1f} | "
          f"{100 * r['ranking/accuracy_normalized']:.1f} | "
          f"{100 * r['ranking/idealized_accuracy_normalized/median']:.1f} |")
  return "\n".join(lines)


def study_gamma(workdirs, out, n_prompts=256, n_samples=2):
  """workdirs: {gamma: workdir}. Win rate at each checkpoint; accuracy from metrics.jsonl."""
  res = {}
  for gamma, wd in workdirs.items():
    models = load_run(wd, need=("reference",))
    cfg = models.config
    logged = {}
    with open(os.path.join(wd, "metrics.jsonl")) as f:
      for line in f:
        rec = json.loads(line)
        if rec["stage"] == "dpo" and "ranking/train_accuracy" in rec:
          logged[rec["step"]] = rec
    prompts = world.eval_prompts(world_config(cfg, "testbed"), n_prompts)
    rows = []
    for step in _checkpoints(wd):
      params = checkpoint_params(Path(wd) / "checkpoints" / "dpo" / str(step))
      ev, _ = testbed_eval.evaluate_policy(
          models.graphdef, params, models.reference, models.tokenizer, prompts,
          n_samples=n_samples, max_new_tokens=cfg.eval.max_new_tokens, max_len=cfg.data.max_len,
          seed=cfg.eval.seed)
      rec = logged[step]
      rows.append({"step": step, "win_rate": ev["win_rate_vs_reference"],
                   "kl": ev["kl_to_reference"],
                   "train_accuracy": rec["ranking/train_accuracy"],
                   "heldout_accuracy": rec["ranking/heldout_accuracy"]})
      print(gamma, rows[-1], flush=True)
    res[gamma] = rows
  steps = sorted({r["step"] for rows in res.values() for r in rows})
  half = steps[len(steps) // 2 - 1]
  corr = {}
  for phase, sel in (("early", lambda s: s <= half), ("late", lambda s: s > half)):
    pts = [r for rows in res.values() for r in rows if sel(r["step"])]
    for acc in ("train_accuracy", "heldout_accuracy"):
      a = np.array([r[acc] for r in pts])
      w = np.array([r["win_rate"] for r in pts])
      corr[f"{phase}/{acc}"] = {"pearson": float(np.corrcoef(a, w)[0, 1]), "n": len(pts),
                                "steps": sorted({r["step"] for r in pts})}
  out_res = {"runs": res, "correlation_with_win_rate": corr, "n_prompts": n_prompts,
             "n_samples": n_samples}
  with open(os.path.join(out, "study_b_gamma.json"), "w") as f:
    json.dump(out_res, f, indent=1)
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  for gamma, rows in res.items():
    s = [r["step"] for r in rows]
    axes[0].plot(s, [r["win_rate"] for r in rows], marker="o", label=f"gamma={gamma}")
    axes[1].plot(s, [r["heldout_accuracy"] for r in rows], marker="o", label=f"gamma={gamma}")
    axes[2].scatter([r["heldout_accuracy"] for r in rows], [r["win_rate"] for r in rows],
                    label=f"gamma={gamma}")
  axes[0].set(xlabel="DPO step", ylabel="oracle win rate vs SFT reference")
  axes[1].set(xlabel="DPO step", ylabel="held-out ranking accuracy")
  axes[2].set(xlabel="held-out ranking accuracy", ylabel="oracle win rate")
  for ax in axes:
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "study_b_gamma.png"), dpi=120)
  plt.close(fig)
  lines = ["| gamma | step | train acc | held-out acc | win rate | KL |", "|---|---|---|---|---|---|"]
  for gamma, rows in res.items():
    for r in rows:
      lines.append(f"| {gamma} | {r['step']} | {100 * r['train_accuracy']:.1f} | "
                   f"{100 * r['heldout_accuracy']:.1f} | {100 * r['win_rate']:.1f} | "
                   f"{r['kl']:.2f} |")
  lines += ["", "| phase / accuracy | Pearson r with win rate | n points | steps |",
            "|---|---|---|---|"]
  for k, v in corr.items():
    lines.append(f"| {k} | {v['pearson']:.3f} | {v['n']} | {v['steps']} |")
  print("\n".join(lines))
  return out_res


def _parse_workdirs(spec):
  """``"0=/a,0.5=/b"`` -> ``{"0": "/a", "0.5": "/b"}``."""
  out = {}
  for kv in (spec or "").split(","):
    gamma, sep, wd = kv.partition("=")
    if not sep or not gamma or not wd:
      raise ConfigError(f"--workdirs: expected GAMMA=WORKDIR[,GAMMA=WORKDIR...], got {spec!r}")
    out[gamma] = wd
  return out


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) != 2 or argv[1] not in STUDIES:
    raise ConfigError(f"expected one study, {' or '.join(STUDIES)}, got {argv[1:]}")
  if argv[1] == "flips":
    if not _WORKDIR.value:
      raise ConfigError("flips needs --workdir")
    study_flips(_WORKDIR.value, _OUT.value)
  else:
    if not _WORKDIRS.value:
      raise ConfigError("gamma needs --workdirs")
    study_gamma(_parse_workdirs(_WORKDIRS.value), _OUT.value,
                n_prompts=_N_PROMPTS.value, n_samples=_N_SAMPLES.value)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
