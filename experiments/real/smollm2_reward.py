"""A Bradley-Terry reward model on the SmolLM2-135M-Instruct backbone (its LM head unused,
a scalar head on the last completion token's hidden state), trained on HH-RLHF harmless
pairs and evaluated on held-out pairs.

  python scripts/train.py --config experiments/real/smollm2_reward.py --workdir runs/smollm2_rm
  python scripts/train.py --config experiments/real/smollm2_reward.py:quick --workdir /tmp/rq
Then score any pairs (RewardBench-style):
  python scripts/eval_rewards.py --model runs/smollm2_rm --data llmbar:../shared/data/llmbar/LLMBar_Natural.json --out runs/rm_llmbar
"""
import ml_collections

from prefjax.train.config import train_section
from prefjax.train.recipes import apply_options, real_config


def get_config(arg=None):
  c = real_config(stages=("reward", "eval_reward"))
  c.reward = train_section(steps=100, batch_size=4, lr=1e-5, warmup=10)
  # The scalar head starts at zero; at the backbone's lr it barely moves in 100 steps (a
  # 40-step run stayed at loss 0.693), so it learns at 100x.
  c.reward.lr_multipliers = ml_collections.ConfigDict(dict(head=100.0))
  c.reward.loss = "bradley_terry"
  c.reward.loss_kwargs = ml_collections.ConfigDict(dict(margin=0.0, center_coef=0.0))
  c.reward.data = ""                      # = config.data.train (HH pairs)
  c.reward.n_pairs, c.reward.n_eval_pairs = 0, 300
  c.reward.length_bias = ml_collections.ConfigDict(dict(pad_rate=0.5, max_pad=8, bias=0.05))
  c.export.enabled = False                # the LM is unchanged; the RM is in params/reward
  return apply_options(c, arg)
