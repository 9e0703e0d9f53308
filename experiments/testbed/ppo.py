"""Testbed PPO: SFT, a sequence reward model (Bradley-Terry on labelled pairs), PPO on its
reward at the last completion token, exact evaluation by the oracle.

Run:
  python scripts/train.py --config experiments/testbed/ppo.py --workdir runs/ppo
  python scripts/train.py --config experiments/testbed/ppo.py:quick --workdir /tmp/ppo_q
Variants (every field of ``config.rl`` is documented in prefjax/rl/stage.py:rl_config):
  --config.rl.kl.adaptive=True --config.rl.kl.target=2.0     (Ziegler et al.'s controller)
  --config.rl.kl.placement=loss --config.rl.kl.estimator=k3
  --config.rl.critic=separate                                (critic from the reward model)
  --config.rl.loss_kwargs.clip_high=0.28                     (DAPO clip-higher)
"""
from prefjax.rl.stage import rl_config
from prefjax.train.config import base_config


def get_config(arg=None):
  c = base_config()
  c.stages = ("sft", "ppo", "eval")
  c.model.overrides.n_layers = 2
  c.rl = rl_config()
  c.rl.name = "ppo"
  c.rl.rewards = {"sequence_rm": 1.0}
  c.rl.iterations, c.rl.rollout_batch_size, c.rl.minibatch_size = 60, 64, 32
  c.rl.max_new_tokens = 14            # sort completions: <= 11 characters + the end token
  c.rl.lr = 1e-4
  c.rl.reward_model.steps, c.rl.reward_model.n_pairs = 300, 4000
  c.checkpoint.every = 10
  if arg == "quick":                  # a few minutes on 2 cores
    c.testbed.n_sft, c.testbed.n_eval_pairs = 512, 64
    c.sft.steps = 20
    c.rl.iterations, c.rl.rollout_batch_size, c.rl.minibatch_size = 4, 32, 16
    c.rl.n_prompts = 256
    c.rl.reward_model.steps, c.rl.reward_model.n_pairs = 20, 256
    c.rl.token_rm.steps, c.rl.token_rm.n_pairs, c.rl.token_rm.n_eval_pairs = 20, 256, 64
    c.eval.n_prompts, c.eval.n_samples = 32, 1
    c.checkpoint.every = 10
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}: expected quick")
  return c
