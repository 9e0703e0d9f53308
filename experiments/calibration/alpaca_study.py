"""Study (b): gameability of a reward on AlpacaEval's verbose / concise variants, before and
after calibration, and agreement with the stored GPT-4-turbo judge.

  python scripts/eval_rewards.py --model runs/hh_rm --max_examples 100 --out runs/alpaca_hh \
      --data ../shared/data/alpaca_eval/annotations/alpaca-7b.json.gz,...
  PYTHONPATH=. python experiments/calibration/alpaca_study.py --scores runs/alpaca_hh/scores.jsonl

Win rate of a model = mean over instructions of 1[r(model output) > r(baseline output)]
(the baseline is gpt4_1106_preview, output_1 of every file). Gameability of a family =
win rate(verbose) - win rate(concise). Calibration (RC-LWR on characters) is fitted on all
scored responses pooled.
"""
import collections
import json
import os
import sys

from absl import app, flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_utils  # noqa: E402

_SCORES = flags.DEFINE_string("scores", "runs/alpaca_hh/scores.jsonl", "eval_rewards output.")
_OUT = flags.DEFINE_string("out", "experiments/calibration/results/alpaca.json", "Output.")
_BASELINE = "gpt4_1106_preview"


def main(argv):
  del argv
  rows = [json.loads(l) for l in open(_SCORES.value)]
  pairs = collections.defaultdict(dict)
  for r in rows:
    pairs[r["pair_id"]][r["chosen"]] = r
  pairs = [p for p in pairs.values() if 0 in p and 1 in p]
  w = np.array([p[1]["reward"] for p in pairs])
  l = np.array([p[0]["reward"] for p in pairs])
  cw = np.array([p[1]["chars"] for p in pairs], float)
  cl = np.array([p[0]["chars"] for p in pairs], float)
  res = {"n_pairs": len(pairs), "methods": {}}
  for name, (a, b) in study_utils.calibrations(w, l, cw, cl).items():
    wins = collections.defaultdict(list)
    for p, ra, rb in zip(pairs, a, b):
      model_is_chosen = p[1]["generator"] != _BASELINE
      rm, rbase = (ra, rb) if model_is_chosen else (rb, ra)
      gen = p[1]["generator"] if model_is_chosen else p[0]["generator"]
      wins[gen].append(float(rm > rbase))
    wr = {g: float(np.mean(v)) for g, v in sorted(wins.items())}
    game = {f: wr[f + "_verbose"] - wr[f + "_concise"] for f in ("alpaca-7b", "gpt-3.5-turbo-1106")
            if f + "_verbose" in wr and f + "_concise" in wr}
    res["methods"][name] = {
        "judge_agreement": float(np.mean(a > b)), "win_rates": wr, "gameability": game,
        "spearman_reward_chars": study_utils.spearman(np.concatenate([a, b]),
                                                      np.concatenate([cw, cl]))}
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  json.dump(res, open(_OUT.value, "w"), indent=2)
  gens = list(next(iter(res["methods"].values()))["win_rates"])
  print("| method | judge agreement | Spearman(r, chars) | " + " | ".join(gens) +
        " | verbose-concise (alpaca-7b, gpt-3.5) |")
  print("|---" * (len(gens) + 4) + "|")
  for k, v in res["methods"].items():
    print(f"| {k} | {v['judge_agreement']:.3f} | {v['spearman_reward_chars']:+.3f} | " +
          " | ".join(f"{v['win_rates'][g]:.2f}" for g in gens) + " | " +
          ", ".join(f"{x:+.2f}" for x in v["gameability"].values()) + " |")


if __name__ == "__main__":
  app.run(main)
