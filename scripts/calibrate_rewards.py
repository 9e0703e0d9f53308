r"""Post-hoc reward calibration of a score file (RC-LWR, RC-Mean, length penalty).

  python scripts/calibrate_rewards.py --scores scores.jsonl --method lwr --out /tmp/calib \
      [--feature chars] [--frac 0.3] [--alpha 1.0] [--lam 0.0]

Writes OUT/calibrated.jsonl (each valid row + feature_value, bias, calibrated_reward,
calibrated), OUT/summary.json (pairwise accuracy and Spearman(reward, feature) before/after,
bad rows with line numbers, uncalibrated counts) and OUT/calibration.png. Bad rows are
reported and skipped; a file that cannot be used exits 1 with a one-line error.

Reference: Huang et al., "Post-hoc Reward Calibration: A Case Study on Length Bias",
arXiv 2409.17407.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
import jax
import numpy as np

# Import this checkout's prefjax even where another checkout is pip-installed (as conftest.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from prefjax import rewards as rw  # noqa: E402

_SCORES = flags.DEFINE_string("scores", None, "Score file (.jsonl or .csv).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_METHOD = flags.DEFINE_enum("method", "lwr", ["lwr", "mean", "penalty"],
                            "lwr: RC-LWR (with --lam: on top of the penalty); mean: RC-Mean; "
                            "penalty: r - lam * c.")
_FEATURE = flags.DEFINE_string("feature", "chars",
                               "Feature column, or chars|tokens|markdown computed from text.")
_FRAC = flags.DEFINE_float("frac", 0.3, "LOWESS window fraction.")
_IT = flags.DEFINE_integer("it", 3, "LOWESS robustifying iterations.")
_DELTA = flags.DEFINE_float("delta", 0.0, "LOWESS interpolation distance (0: exact).")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "Calibration constant: r - alpha * b(c).")
_LAM = flags.DEFINE_float("lam", 0.0, "Length-penalty coefficient lambda.")
_RATIO = flags.DEFINE_float("ratio", 4.0, "RC-Mean: d = mean |c1 - c2| / ratio.")
_HALF_WIDTH = flags.DEFINE_float("half_width", None, "RC-Mean: window d (overrides --ratio).")
_MIN_COUNT = flags.DEFINE_integer("min_count", 20, "RC-Mean: least points in a window.")
_MIN_POINTS = flags.DEFINE_integer("min_points", 10, "Least valid rows to calibrate at all.")
_REWARD_FIELD = flags.DEFINE_string("reward_field", "reward", "Reward column.")
_TEXT_FIELD = flags.DEFINE_string("text_field", "text", "Text column for text features.")
_PAIR_FIELD = flags.DEFINE_string("pair_field", "pair_id", "Pair id column.")
_MAX_PLOT = flags.DEFINE_integer("max_plot_points", 20_000, "Scatter subsample size.")
_X64 = flags.DEFINE_bool("x64", True, "Compute in float64.")

flags.register_multi_flags_validator(
    ["method", "lam"], lambda f: f["method"] != "penalty" or f["lam"] != 0.0,
    "--method penalty needs a non-zero --lam")

_MAX_PRINTED = 20
_MAX_LISTED = 1000


def _calibrate(scores):
  """Returns (calibrated [N], bias [N], applied [N] bool, extra summary fields)."""
  r, c = scores.rewards, scores.features
  if _METHOD.value == "penalty":
    out = rw.length_penalty(r, c, lam=_LAM.value)
    return np.asarray(out.rewards), np.asarray(out.bias), np.ones(r.size, bool), {}
  if _METHOD.value == "lwr":
    wide = rw.frac_for_ties(c, _FRAC.value)
    if wide > _FRAC.value:
      values, counts = np.unique(c, return_counts=True)
      print(f"warning: {scores.path}: {counts.max()} of {c.size} rows have feature "
            f"{values[counts.argmax()]:g}, more than a LOWESS window of --frac {_FRAC.value:g} "
            f"holds: that value's bias is one row's reward (statsmodels' rule); --frac "
            f"{wide:.3f} fits it by the group's mean", file=sys.stderr)
    kw = dict(frac=_FRAC.value, it=_IT.value, delta=_DELTA.value, alpha=_ALPHA.value)
    out = (rw.rc_lwr_penalty(r, c, lam=_LAM.value, **kw) if _LAM.value
           else rw.rc_lwr(r, c, **kw))
    return np.asarray(out.rewards), np.asarray(out.bias), np.ones(r.size, bool), {}
  win, lose, _ = scores.pairs()
  half_width = _HALF_WIDTH.value
  if half_width is None:
    if win.size == 0:
      raise rw.ScoresError(f"{scores.path}: --method mean needs labelled pairs "
                           f"('{_PAIR_FIELD.value}' + chosen/label) to set d, or --half_width")
    half_width = float(rw.rc_mean_half_width(c[win], c[lose], ratio=_RATIO.value))
  out = rw.rc_mean_rows(r, c, half_width=half_width, min_count=_MIN_COUNT.value,
                        alpha=_ALPHA.value, partner=scores.partner())
  applied = np.asarray(out.calibrated)
  extra = {"half_width": half_width, "rows/uncalibrated": int((~applied).sum()),
           "pairs/uncalibrated": int((~applied[win]).sum())}
  if extra["rows/uncalibrated"]:
    print(f"warning: {scores.path}: {extra['rows/uncalibrated']} rows "
          f"({extra['pairs/uncalibrated']} pairs) left uncalibrated: fewer than "
          f"--min_count={_MIN_COUNT.value} points within +/- {half_width:.4g}", file=sys.stderr)
  return np.asarray(out.rewards), np.asarray(out.bias), applied, extra


def _metrics(scores, values):
  win, lose, _ = scores.pairs()
  acc = (float(np.asarray(rw.pairwise_accuracy(values[win], values[lose]), np.float64).mean())
         if win.size else None)
  rho = float(rw.spearman(values, scores.features))
  return {"ranking/accuracy": acc, "spearman/reward_feature": None if np.isnan(rho) else rho}


def _plot(path, scores, calibrated, applied):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  c, r = scores.features, scores.rewards
  rng = np.random.default_rng(0)
  idx = (rng.choice(c.size, _MAX_PLOT.value, replace=False) if c.size > _MAX_PLOT.value
         else np.arange(c.size))
  removed = (r - calibrated)[applied]  # alpha * b(c), plus lam * c with a penalty
  curve = np.argsort(c[applied], kind="stable")
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
  axes[0].scatter(c[idx], r[idx], s=3, alpha=0.3, label="reward")
  axes[0].plot(c[applied][curve], removed[curve], color="C3", lw=2, label="removed r - r_hat")
  axes[0].set_title(f"before ({_METHOD.value})")
  axes[1].scatter(c[idx], calibrated[idx], s=3, alpha=0.3, color="C2")
  axes[1].set_title("after: r_hat")
  for ax in axes:
    ax.set_xlabel(scores.feature)
  axes[0].set_ylabel("reward")
  axes[0].legend(loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _run():
  if _X64.value:
    jax.config.update("jax_enable_x64", True)
  path = _SCORES.value
  scores = rw.read_scores(path, feature=_FEATURE.value, reward_field=_REWARD_FIELD.value,
                          text_field=_TEXT_FIELD.value, pair_field=_PAIR_FIELD.value)
  for bad in scores.bad_rows[:_MAX_PRINTED]:
    print(f"warning: skipped {bad.describe(path)}", file=sys.stderr)
  if len(scores.bad_rows) > _MAX_PRINTED:
    print(f"warning: {path}: {len(scores.bad_rows) - _MAX_PRINTED} more bad rows skipped "
          "(all listed in summary.json)", file=sys.stderr)
  n = len(scores.rows)
  if n < _MIN_POINTS.value:
    raise rw.ScoresError(f"{path}: too few valid rows to calibrate: {n} < --min_points="
                         f"{_MIN_POINTS.value} ({len(scores.bad_rows)} bad rows skipped)")
  calibrated, bias, applied, extra = _calibrate(scores)
  os.makedirs(_OUT.value, exist_ok=True)
  rw.write_jsonl(os.path.join(_OUT.value, "calibrated.jsonl"), (
      {**row, "feature_value": scores.features[i], "bias": bias[i],
       "calibrated_reward": calibrated[i], "calibrated": applied[i]}
      for i, row in enumerate(scores.rows)))
  _plot(os.path.join(_OUT.value, "calibration.png"), scores, calibrated, applied)
  win, _, incomplete = scores.pairs()
  summary = {
      "scores": path, "method": _METHOD.value, "feature": _FEATURE.value,
      "params": {"frac": _FRAC.value, "it": _IT.value, "delta": _DELTA.value,
                 "alpha": _ALPHA.value, "lam": _LAM.value, "ratio": _RATIO.value,
                 "min_count": _MIN_COUNT.value},
      "rows/total": scores.num_records, "rows/valid": n, "rows/bad": len(scores.bad_rows),
      "pairs/complete": int(win.size), "pairs/incomplete": incomplete, **extra,
      "before": _metrics(scores, scores.rewards), "after": _metrics(scores, calibrated),
      "bad_rows": [{"line": b.line, "field": b.field, "message": b.message}
                   for b in scores.bad_rows[:_MAX_LISTED]],
      "bad_rows_truncated": len(scores.bad_rows) > _MAX_LISTED,
      "plot": "calibration.png",
  }
  with open(os.path.join(_OUT.value, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  b, a = summary["before"], summary["after"]
  print(f"{_METHOD.value}: {n} rows ({len(scores.bad_rows)} bad skipped), accuracy "
        f"{b['ranking/accuracy']} -> {a['ranking/accuracy']}, spearman(reward, "
        f"{_FEATURE.value}) {b['spearman/reward_feature']} -> {a['spearman/reward_feature']}; "
        f"wrote {_OUT.value}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep stderr to our one-line messages
  try:
    _run()
  except rw.ScoresError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
