"""Mean +- standard error over seeds of the pilot runs: python experiments/rlhf/collect.py OUT"""
import glob
import json
import os
import sys

import numpy as np

KEYS = ("win_rate_vs_reference", "kl_to_reference", "oracle_reward_policy",
        "oracle_reward_reference", "accuracy_policy", "token_rm/precision", "token_rm/recall")


def main(out):
  runs = {}
  for f in sorted(glob.glob(os.path.join(out, "*_s*", "summary.json"))):
    method = os.path.basename(os.path.dirname(f)).rsplit("_s", 1)[0]
    runs.setdefault(method, []).append(json.load(open(f)))
  print("| method | seeds | " + " | ".join(KEYS) + " |")
  print("|---" * (len(KEYS) + 2) + "|")
  for m, rs in runs.items():
    cells = []
    for k in KEYS:
      v = np.array([r[k] for r in rs if k in r], float)
      se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
      cells.append(f"{v.mean():.3f} +- {se:.3f}" if len(v) else "-")
    print(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main(sys.argv[1])
