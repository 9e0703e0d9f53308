r"""RewardBench-style evaluation of a reward: per-subset accuracy, sections, overall, scores.

  python scripts/eval_rewards.py --model runs/rm --data ../shared/data/llmbar/LLMBar_Natural.json \
      --data jsonl:my_pairs.jsonl --out /tmp/eval_rm
  python scripts/eval_rewards.py --model runs/dpo --data ...   # DPO implicit reward
  python scripts/eval_rewards.py --model loglik:runs/dpo ...     # beta * log pi (no reference)

--model: a prefjax workdir with params/reward (reward model), or with checkpoints/dpo (the
implicit reward beta * log pi/pi_ref; the reference is the run's SFT model). --data: any spec
``prefjax.data.read_preferences`` accepts (repeat the flag, or separate with commas).
Writes OUT/scores.jsonl (one row per response: id, pair_id, chosen, reward, chars, tokens,
subset, ...: the input of scripts/calibrate_rewards.py), OUT/results.json and OUT/results.md.
A tie counts as wrong.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
from prefjax.cli import main_guard  # noqa: E402

_MODEL = flags.DEFINE_string("model", None, "Workdir ([reward:|implicit:|loglik:]PATH).",
                             required=True)
_DATA = flags.DEFINE_multi_string("data", None, "Preference file spec(s).", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_MAX = flags.DEFINE_integer("max_examples", 0, "Use the first N pairs of each file (0: all).")
_BETA = flags.DEFINE_float("beta", None, "Implicit reward beta (default: the run's).")
_MAX_LEN = flags.DEFINE_integer("max_len", None, "Scoring length (default: the run's).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Scoring batch size.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  from prefjax.data import read_preferences
  from prefjax.rewards import evaluate
  from prefjax.rewards.saved_scorers import load_scorer
  from prefjax.rewards.scores_io import write_jsonl

  scorer, info = load_scorer(_MODEL.value, beta=_BETA.value, max_len=_MAX_LEN.value,
                             batch_size=_BATCH.value)
  scorer = evaluate.MemoScorer(scorer)   # a (prompt, response) repeated across files: once
  specs = [s for spec in _DATA.value for s in spec.split(",") if s]
  rows = []
  for spec in specs:
    res = read_preferences(spec)
    if res.skipped:
      print(res.summary(limit=3), file=sys.stderr)
    examples = res.examples[:_MAX.value] if _MAX.value else res.examples
    r, _ = evaluate.score_examples(scorer, examples, fmt=res.format)
    rows.extend(r)
    print(f"{spec}: {len(r) // 2} pairs scored ({scorer.scored} distinct responses so far)",
          file=sys.stderr)
  os.makedirs(_OUT.value, exist_ok=True)
  write_jsonl(os.path.join(_OUT.value, "scores.jsonl"), rows)
  summary = evaluate.summarize(rows)
  summary.update(model=info, data=specs,
                 truncated_fraction=sum(bool(r["truncated"]) for r in rows) / max(len(rows), 1))
  with open(os.path.join(_OUT.value, "results.json"), "w") as f:
    json.dump(summary, f, indent=2)
  table = evaluate.render_markdown(summary)
  with open(os.path.join(_OUT.value, "results.md"), "w") as f:
    f.write(table + "\n")
  print(table)


if __name__ == "__main__":
  main_guard(lambda: app.run(main))
