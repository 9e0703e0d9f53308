"""GRPO on SmolLM2-135M-Instruct with a verifiable reward: sums of two one-digit numbers
(reasoning-gym's chain_sum, one solved example before each question, the answer on a last
line "Answer: X"), the task's exact scorer as reward and judge, no critic, no reward model.

Run (full recipe, CPU-sized):
  python scripts/train.py --config experiments/real/smollm2_grpo.py --workdir runs/grpo
CPU smoke run (a few minutes):
  python scripts/train.py --config experiments/real/smollm2_grpo.py:quick --workdir /tmp/g
Seeds (the README's table uses 0, 1, 2): --config.seed=1
Variants: --config.rl.advantage.estimator=dr_grpo --config.rl.loss_kwargs.aggregation=seq_sum
  --config.rl.advantage.estimator=rloo    --config.data.train=tasks:chain_sum,gcd
  --config.rl.rewards="{'verifier': 1.0, 'format': 0.2}" (format shaping)

Outputs: workdir/summary.json (eval/verified_accuracy/policy and /reference, win rate, KL,
length, format rate), workdir/generations.jsonl (every held-out sample of both models),
workdir/metrics.jsonl (one line per iteration: rewards, verified accuracy of the rollout,
sampler-vs-trainer log-prob mismatch, PPO ratio statistics).
"""
from prefjax.train.recipes import real_rl_config, rl_quick


def get_config(arg=None):
  c = real_rl_config()
  c.rl.name = "grpo"
  c.rl.rewards = {"verifier": 1.0}
  c.rl.critic = "none"
  c.rl.group_size = 8
  c.rl.rollout_batch_size, c.rl.minibatch_size, c.rl.ppo_epochs = 32, 8, 1
  c.rl.old_logps = "sampler"          # the decode's log-probs: no re-forward of the rollout
  c.rl.advantage.estimator = "grpo"
  c.rl.advantage.whiten_advantages = False
  c.rl.loss_kwargs.vf_coef = 0.0
  c.rl.loss_kwargs.aggregation = "seq_mean"
  c.rl.kl.placement, c.rl.kl.estimator, c.rl.kl.coef = "loss", "k3", 0.04
  c.rl.lr, c.rl.warmup_steps = 3e-6, 0
  c.rl.temperature = 0.8
  c.rl.iterations = 8
  if arg == "quick":
    rl_quick(c)
    c.rl.rollout_batch_size, c.rl.minibatch_size = 16, 8
  elif arg not in (None, ""):
    raise ValueError(f"unknown config arg {arg!r}: expected quick")
  return c
