"""Study (a): a reward model trained on length-biased labels, calibrated post hoc.

  python scripts/train.py --config experiments/testbed/reward_model.py:length_bias \
      --workdir runs/rm_lb
  PYTHONPATH=. python experiments/calibration/length_bias_study.py --model runs/rm_lb \
      --out experiments/calibration/results/length_bias.json

Held-out pairs are labelled by the oracle r* alone (padding carries no quality); we report
oracle accuracy and Spearman(reward, characters) before and after RC-Mean, RC-LWR and the
length penalty.
"""
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study_utils  # noqa: E402

_MODEL = flags.DEFINE_string("model", "runs/rm_lb", "Reward-model workdir.")
_OUT = flags.DEFINE_string("out", "experiments/calibration/results/length_bias.json", "Output.")
_N = flags.DEFINE_integer("n_pairs", 1000, "Held-out oracle-labelled pairs.")


def main(argv):
  del argv
  import numpy as np
  from prefjax.rewards.saved_scorers import load_scorer
  from prefjax.train.finished_run import run_config
  from prefjax.testbed import length_bias, world

  scorer, _ = load_scorer(_MODEL.value)
  c = run_config(_MODEL.value)
  wcfg = world.WorldConfig(tasks=tuple(c.testbed.tasks), seed=c.testbed.seed,
                           proposal_correct_rate=c.testbed.proposal_correct_rate)
  lb = length_bias.LengthBias(**c.reward.length_bias.to_dict())
  pairs = length_bias.length_bias_pairs(wcfg, lb, _N.value, split="eval")
  train = length_bias.length_bias_pairs(wcfg, lb, c.reward.n_pairs, split="train")
  prompts = [p["prompt"] for p in pairs]
  rc = scorer.score(prompts, [p["chosen"] for p in pairs])
  rr = scorer.score(prompts, [p["rejected"] for p in pairs])
  cc = np.array([len(p["chosen"]) for p in pairs], np.float64)
  cr = np.array([len(p["rejected"]) for p in pairs], np.float64)
  res = {"n_pairs": len(pairs), "train_label_oracle_agreement":
         length_bias.oracle_agreement(train), "length_bias": lb.__dict__, "methods": {}}
  for name, (a, b) in study_utils.calibrations(rc, rr, cc, cr).items():
    res["methods"][name] = {
        "oracle_accuracy": float(np.mean(a > b)),
        "spearman_reward_chars": study_utils.spearman(np.concatenate([a, b]),
                                                      np.concatenate([cc, cr])),
        "accuracy_padding_differs": float(np.mean((a > b)[cc != cr])),
    }
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(res, f, indent=2)
  print("| method | oracle accuracy | accuracy (lengths differ) | Spearman(r, chars) |")
  print("|---|---:|---:|---:|")
  for k, v in res["methods"].items():
    print(f"| {k} | {v['oracle_accuracy']:.3f} | {v['accuracy_padding_differs']:.3f} | "
          f"{v['spearman_reward_chars']:+.3f} |")
  print(f"train labels agreeing with r*: {res['train_label_oracle_agreement']:.3f}")


if __name__ == "__main__":
  app.run(main)
