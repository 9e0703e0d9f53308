"""A small byte-level reward model trained from scratch on HH-RLHF (harmless-base test, 2307
pairs) on a CPU: the real-data reward of the calibration study (weak by construction).

Run:
  python scripts/train.py --config experiments/calibration/hh_reward.py --workdir runs/hh_rm
  python scripts/eval_rewards.py --model runs/hh_rm --data ../shared/data/llmbar/LLMBar_Natural.json \
      --out runs/hh_rm_eval
"""
import ml_collections

from prefjax.train.config import base_config, train_section


def get_config(arg=None):
  c = base_config()
  c.stages = ("reward", "eval_reward")
  c.reward = train_section(steps=120, batch_size=16, lr=1e-3, warmup=10)
  c.reward.loss = "bradley_terry"
  c.reward.loss_kwargs = ml_collections.ConfigDict(dict(margin=0.0, center_coef=0.0))
  c.reward.data = "hh:../shared/data/hh-rlhf/harmless-base_test.jsonl.gz"
  c.reward.n_pairs, c.reward.n_eval_pairs = 100000, 300
  c.reward.max_len = 160
  c.data.max_len = 160
  c.model.overrides.n_layers = 2
  c.model.overrides.max_len = 256
  if arg == "quick":
    c.reward.steps, c.reward.n_eval_pairs, c.reward.batch_size = 5, 32, 8
  return c
