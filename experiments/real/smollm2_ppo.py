"""PPO with a critic on SmolLM2-135M-Instruct, rewarded by the verifier of a verifiable task
(sums of two one-digit numbers, reasoning-gym's chain_sum): a value head on the policy,
GAE advantages, the k1 KL to the reference in the reward.

Run (full recipe, CPU-sized):
  python scripts/train.py --config experiments/real/smollm2_ppo.py --workdir runs/ppo
CPU smoke run (a few minutes):
  python scripts/train.py --config experiments/real/smollm2_ppo.py:quick --workdir /tmp/p
A reward model instead of the verifier (trained by a run with a 'reward' stage):
  --config.rl.rewards="{'rm:runs/smollm2_reward': 1.0}"
Variants: --config.rl.critic=separate (own backbone)  --config.rl.kl.adaptive=True

Outputs: as experiments/real/smollm2_grpo.py (summary.json, generations.jsonl, metrics.jsonl).
"""
from prefjax.train.recipes import real_rl_config, rl_quick


def get_config(arg=None):
  c = real_rl_config()
  c.rl.name = "ppo"
  c.rl.rewards = {"verifier": 1.0}
  c.rl.critic = "shared"
  c.rl.group_size = 1
  c.rl.rollout_batch_size, c.rl.minibatch_size, c.rl.ppo_epochs = 32, 8, 1
  c.rl.advantage.estimator = "gae"
  c.rl.advantage.whiten_advantages = True
  c.rl.loss_kwargs.vf_coef = 0.1
  c.rl.loss_kwargs.aggregation = "token_mean"
  c.rl.kl.placement, c.rl.kl.estimator, c.rl.kl.coef = "reward", "k1", 0.02
  c.rl.lr, c.rl.warmup_steps = 3e-6, 0
  c.rl.lr_multipliers = {"value_head": 100.0, "value_bias": 100.0}
  c.rl.temperature = 0.8
  c.rl.iterations = 8
  if arg == "quick":
    rl_quick(c)
    c.rl.rollout_batch_size = 16
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}: expected quick")
  return c
