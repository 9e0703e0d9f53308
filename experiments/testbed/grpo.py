"""Testbed GRPO: SFT, then GRPO with the oracle as a verifiable reward (no reward model, no
critic): 4 samples per prompt, group-normalised advantages, k3 KL to the reference in the
loss (DeepSeekMath's recipe), exact evaluation.

Run:
  python scripts/train.py --config experiments/testbed/grpo.py --workdir runs/grpo
  python scripts/train.py --config experiments/testbed/grpo.py:quick --workdir /tmp/grpo_q
Variants:
  --config.rl.advantage.estimator=rloo | dr_grpo (with --config.rl.loss_kwargs.aggregation=seq_sum)
  --config.rl.advantage.estimator=reinforce_pp --config.rl.kl.placement=reward
"""
import importlib.util
import os

# The sibling ppo.py by path (config files are loaded by path, not as a package).
_spec = importlib.util.spec_from_file_location(
    "_testbed_ppo_config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "ppo.py"))
ppo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ppo)


def get_config(arg=None):
  c = ppo.get_config(arg)
  c.rl.name = "grpo"
  c.rl.rewards = {"oracle": 1.0}
  c.rl.critic = "none"
  c.rl.group_size = 4
  c.rl.advantage.estimator = "grpo"
  c.rl.advantage.whiten_advantages = False
  c.rl.advantage.kwargs = {}
  c.rl.loss_kwargs.vf_coef = 0.0
  c.rl.loss_kwargs.aggregation = "seq_mean"
  c.rl.kl.placement, c.rl.kl.estimator, c.rl.kl.coef = "loss", "k3", 0.04
  return c
