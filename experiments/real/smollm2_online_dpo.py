"""Online (iterative) DPO on SmolLM2-135M-Instruct judged by a verifiable task: each round
samples K responses per prompt from the current policy, scores them with the task's exact
verifier, and trains DPO on (best, worst) pairs (or mDPO on groups with ``:mdpo``).

Run (full recipe, CPU-sized):
  python scripts/train.py --config experiments/real/smollm2_online_dpo.py --workdir runs/odpo
CPU smoke run (a few minutes):
  python scripts/train.py --config experiments/real/smollm2_online_dpo.py:quick --workdir /tmp/o
Groups of K (mDPO, arXiv 2410.12138):  --config experiments/real/smollm2_online_dpo.py:mdpo
Any registered loss: --config.online.loss=ipo | simpo | kto (unpaired) | mipo (multi)
  --config.online.pairs=all (every pair with different scores)
  --config.online.reference=previous (the reference moves to each round's start)

Outputs: as experiments/real/smollm2_grpo.py (summary.json, generations.jsonl, metrics.jsonl
with one line per round: examples formed, mean score, verified accuracy of the samples).
"""
import ml_collections

from prefjax.rl.online import online_config
from prefjax.train.recipes import real_rl_config, rl_quick


def get_config(arg=None):
  c = real_rl_config(stages=("online", "eval"))
  c.online = online_config()
  o = c.online
  o.rounds, o.prompts_per_round, o.k = 8, 16, 4
  o.steps_per_round, o.batch_size = 4, 8
  o.loss, o.loss_kwargs = "dpo", ml_collections.ConfigDict(dict(beta=0.1))
  o.lr = 2e-6
  o.max_new_tokens = 24
  o.n_prompts = 120
  opts = [a for a in (arg or "").split(",") if a]
  for opt in opts:
    if opt == "quick":
      rl_quick(c)
      o.rounds, o.prompts_per_round, o.steps_per_round = 1, 8, 2
      o.n_prompts = 64
    elif opt == "mdpo":
      o.loss = "mdpo"
      c.data.group_size = o.k // 2
    else:
      raise ValueError(f"unknown option {opt!r}: expected quick and/or mdpo")
  return c
