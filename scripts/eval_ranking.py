"""Ranking accuracy, idealized ranking accuracy and the alignment gap of a model on pairs.

Writes DIR/ranking.json, DIR/table1.md (the layout of Table 1 of Chen et al., "Preference
Learning Algorithms Do Not Learn Preference Rankings", arXiv 2405.19534) and
DIR/difficulty_hist.png (DPO difficulty c = log pi_ref(y_l|x) - log pi_ref(y_w|x)).

  python scripts/eval_ranking.py --model runs/dpo --data testbed:sort --out /tmp/rank
  python scripts/eval_ranking.py --model runs/dpo/checkpoints/dpo/100 --data testbed:sort:train \
      --out /tmp/rank100
  python scripts/eval_ranking.py --model path/to/SmolLM2-135M-Instruct.Q4_1.gguf \
      --data hh:../shared/data/hh-rlhf/harmless-base_test.jsonl.gz --limit 200 --out /tmp/hh

MODEL is a prefjax workdir (policy = its final model, reference = its last SFT checkpoint or
its starting model), one DPO checkpoint dir, or a model (HF dir, GGUF, prefjax checkpoint:
its own reference); ``prefjax.train.finished_run.load_run`` reads all of them. DATA is ``testbed:TASKS[:SPLIT]`` (exact alpha) or a file
spec of ``prefjax.data.read_preferences``; rows that cannot be parsed, tokenised or fitted
into --max-len are counted and reported, never fatal. Single-label rows use
--default-alpha (0.75, as in the paper's public code) for the idealized accuracy.
"""
import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # checkout first
from prefjax.cli import main_guard

_MODEL = flags.DEFINE_string("model", None, "prefjax workdir / DPO checkpoint / HF dir / GGUF.")
_DATA = flags.DEFINE_string("data", None, "testbed:TASKS[:SPLIT] or a preference file spec.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_BETAS = flags.DEFINE_string("beta_grid", "0.01,0.1,1,5,10", "Betas of the idealized accuracy.")
_LIMIT = flags.DEFINE_integer("limit", None, "Score only the first N pairs.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Most sequences per forward pass.")
_BATCH_TOKENS = flags.DEFINE_integer(
    "batch_tokens", 4096, "Tokens per forward pass: a length-L bucket runs "
    "min(batch_size, batch_tokens // L) rows (0: always batch_size).")
_BUCKETS = flags.DEFINE_string(
    "buckets", "pow2", "Length buckets: 'pow2' (32, 64, ..., max_len), 'pow1.5' (32, 48, 64, "
    "96, ...: less padding, twice the compiles) or comma-separated lengths.")
_LAYOUT = flags.DEFINE_enum(
    "layout", "prefix", ["prefix", "packed", "plain"],
    "Scoring rows: 'prefix' (each prompt run once for both responses, rows packed into "
    "length buckets), 'packed' (one sequence per unit, packed) or 'plain' (one row per "
    "sequence); all three give equal scores.")
_MAX_LEN = flags.DEFINE_integer("max_len", None,
                                "Longest row (default: the workdir's data.max_len, else 512).")
_ALPHA = flags.DEFINE_float("default_alpha", 0.75, "alpha of single-label rows.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["model", "data", "out"])


def _plot_difficulty(c, path, title):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.hist(c, bins=50, color="tab:blue", alpha=0.8)
  ax.axvline(0.0, color="k", lw=1, ls="--")
  ax.set_xlabel("c = log pi_ref(y_l|x) - log pi_ref(y_w|x)   (c > 0: reference misranks)")
  ax.set_ylabel("pairs")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def bucket_spec(spec: str, max_len: int):
  """The bucket lengths of --buckets (None = powers of two)."""
  from prefjax.errors import ConfigError
  if spec == "pow2":
    return None
  if spec == "pow1.5":
    out, n = [], 32
    while n < max_len:
      out += [n, n * 3 // 2]
      n *= 2
    return [b for b in out if b < max_len]
  try:
    return [int(b) for b in spec.split(",")]
  except ValueError:
    raise ConfigError(f"--buckets {spec!r}: expected pow2, pow1.5 or comma-separated lengths")


def evaluate(model, data, out, *, betas, limit=None, batch_size=16, max_len=None,
             default_alpha=0.75, progress=True, batch_tokens=4096, buckets="pow2",
             layout="prefix") -> dict:
  """Scores every pair and writes the three outputs; returns the ranking.json dict."""
  import numpy as np
  from prefjax.errors import ConfigError, PrefjaxError
  from prefjax.eval import pair_scoring, ranking_sources
  from prefjax.metrics import flips, ranking
  from prefjax.train.finished_run import load_run

  try:
    models = load_run(model)
  except PrefjaxError as e:
    raise ConfigError(f"--model {e}") from None
  if max_len is None:
    max_len = int(models.config.data.max_len) if models.config is not None else 512
  pairs = ranking_sources.load_pairs(data, config=models.config, limit=limit,
                                     default_alpha=default_alpha)
  prompts, chosen, rejected, kept, dropped = pair_scoring.encode_pairs(
      models.tokenizer, pairs.pairs, max_len=max_len)
  skipped = [(loc, f"malformed row: {why}") for loc, why in pairs.skipped]
  skipped += [(pairs.pairs[i]["id"], why) for i, why in dropped]
  parsed = len(pairs.pairs) if pairs.num_parsed is None else pairs.num_parsed
  report = (f"{data}: {parsed + len(pairs.skipped)} rows"
            + (f" (--limit {limit}: the first {len(pairs.pairs)} of {parsed} parsed pairs)"
               if len(pairs.pairs) < parsed else "")
            + f", {len(kept)} pairs scored; "
            f"skipped {len(pairs.skipped)} malformed rows ({pairs.format})"
            + (f" at {pairs.unit}s {', '.join(str(l) for l, _ in pairs.skipped[:20])}"
               if pairs.skipped else "")
            + f", {len(dropped)} pairs that cannot be scored")
  print(report, flush=True)
  for loc, why in skipped[:10]:
    print(f"  skipped {loc}: {why}", flush=True)
  if not kept:
    raise ConfigError(f"--data {data}: no pair could be scored")
  print(f"model: {models.description}", flush=True)

  kw = dict(max_len=max_len, batch_size=batch_size, progress=progress,
            batch_tokens=batch_tokens or None, buckets=bucket_spec(buckets, max_len),
            layout=layout)
  pol_c, pol_r = pair_scoring.score_pairs(models.graphdef, models.policy, prompts, chosen,
                                          rejected, desc="policy", **kw)
  seconds, n_seq = pol_c.seconds, 2 * len(kept)
  if models.reference is models.policy:
    ref_c, ref_r = pol_c, pol_r
  else:
    ref_c, ref_r = pair_scoring.score_pairs(models.graphdef, models.reference, prompts, chosen,
                                            rejected, desc="reference", **kw)
    seconds, n_seq = seconds + ref_c.seconds, n_seq * 2
  sps = n_seq / max(seconds, 1e-9)
  print(f"scored {n_seq} sequences in {seconds:.1f} s: {sps:.2f} sequences/s "
        f"({pol_c.num_shapes} length buckets)", flush=True)

  alpha = np.array([pairs.pairs[i]["alpha"] for i in kept], np.float32)
  row = ranking.table1(
      policy_chosen_sums=pol_c.sums, policy_rejected_sums=pol_r.sums,
      policy_chosen_means=pol_c.means, policy_rejected_means=pol_r.means,
      ref_chosen_sums=ref_c.sums, ref_rejected_sums=ref_r.sums,
      ref_chosen_means=ref_c.means, ref_rejected_means=ref_r.means, alpha=alpha, betas=betas)
  row = {k: float(v) for k, v in row.items()}
  c = np.asarray(flips.dpo_difficulty(ref_c.sums, ref_r.sums))
  ref_correct = np.asarray(ranking.ranking_accuracy(ref_c.sums, ref_r.sums, alpha)[0])
  pol_correct = np.asarray(ranking.ranking_accuracy(pol_c.sums, pol_r.sums, alpha)[0])
  f = {k: float(v) for k, v in flips.flip_rates(ref_correct, pol_correct).items()}
  result = {
      "model": model, "model_description": models.description, "data": data,
      "source": pairs.source, "format": pairs.format, "alpha": pairs.alpha_note,
      "betas": list(betas), "max_len": max_len, "num_pairs": len(kept),
      "num_rows": parsed + len(pairs.skipped), "num_parsed_pairs": parsed,
      "num_skipped_malformed": len(pairs.skipped), "num_skipped_unscorable": len(dropped),
      "skipped": [[str(l), w] for l, w in skipped], "report": report,
      "num_truncated_prompts": int(np.sum(pol_c.truncated | pol_r.truncated)),
      "sequences_per_second": sps, "num_sequences": n_seq, "seconds": seconds,
      "num_length_buckets": pol_c.num_shapes, "batch_size": batch_size,
      "batch_tokens": batch_tokens, "buckets": buckets, "layout": layout, "table1": row,
      "flips": f,
      "reference_accuracy": float(ref_correct.mean()),
      "difficulty": {"mean": float(c.mean()), "median": float(np.median(c)),
                     "fraction_positive": float(np.mean(c > 0)),
                     "quantiles_10_50_90": [float(q) for q in np.quantile(c, [.1, .5, .9])]},
      "same_model_as_reference": models.reference is models.policy,
  }
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "ranking.json"), "w") as fh:
    json.dump(result, fh, indent=2)
  label = f"{os.path.basename(os.path.normpath(model))} on {os.path.basename(pairs.source)}"
  md = (f"Ranking accuracies (%) on {len(kept)} pairs of `{data}` ({pairs.alpha_note}); "
        f"betas {', '.join(f'{b:g}' for b in betas)}.\n\n"
        + ranking.render_markdown({label: row}) + "\n")
  with open(os.path.join(out, "table1.md"), "w") as fh:
    fh.write(md)
  _plot_difficulty(c, os.path.join(out, "difficulty_hist.png"),
                   f"{label}: {len(kept)} pairs, {100 * np.mean(c > 0):.1f}% with c > 0")
  print(md, flush=True)
  return result


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from prefjax.errors import ConfigError
  try:
    betas = tuple(float(b) for b in _BETAS.value.split(","))
  except ValueError:
    raise ConfigError(f"--beta_grid {_BETAS.value!r}: expected comma-separated numbers")
  if any(b <= 0 for b in betas):
    raise ConfigError(f"--beta_grid {_BETAS.value!r}: betas must be positive")
  evaluate(_MODEL.value, _DATA.value, _OUT.value, betas=betas, limit=_LIMIT.value,
           batch_size=_BATCH.value, max_len=_MAX_LEN.value, default_alpha=_ALPHA.value,
           progress=_PROGRESS.value, batch_tokens=_BATCH_TOKENS.value, buckets=_BUCKETS.value,
           layout=_LAYOUT.value)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
