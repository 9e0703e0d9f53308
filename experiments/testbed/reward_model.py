"""Testbed reward model: SFT backbone, then a Bradley-Terry reward model, then held-out eval.

Run:
  python scripts/train.py --config experiments/testbed/reward_model.py --workdir runs/rm
  python scripts/train.py --config experiments/testbed/reward_model.py:length_bias \
      --workdir runs/rm_lb          # labels biased towards longer (padded) responses
  python scripts/train.py --config experiments/testbed/reward_model.py:quick --workdir /tmp/q
Variants:
  --config.reward.loss_kwargs.center_coef=0.01   (reward centering, Eisenstein et al.)
  --config.reward.loss_kwargs.margin=0.5
"""
import ml_collections

from prefjax.train.config import base_config, train_section


def get_config(arg=None):
  c = base_config()
  c.stages = ("sft", "reward", "eval_reward")
  c.reward = train_section(steps=300, batch_size=32, lr=1e-3, warmup=20)
  c.reward.loss = "bradley_terry"
  c.reward.loss_kwargs = ml_collections.ConfigDict(dict(margin=0.0, center_coef=0.0))
  c.reward.data = "world"
  c.reward.n_pairs, c.reward.n_eval_pairs = 4000, 512
  c.reward.length_bias = ml_collections.ConfigDict(dict(pad_rate=0.5, max_pad=8, bias=0.05))
  c.sft.steps = 200
  c.data.max_len = 48
  c.model.overrides.n_layers = 2
  if arg == "length_bias":
    c.reward.data = "length_bias"
  elif arg == "quick":     # seconds: tiny everything
    c.testbed.n_sft = 256
    c.sft.steps, c.reward.steps = 10, 30
    c.reward.n_pairs, c.reward.n_eval_pairs = 256, 64
    c.checkpoint.every = 10
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}: expected length_bias or quick")
  return c
