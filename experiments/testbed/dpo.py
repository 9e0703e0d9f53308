"""Testbed DPO: SFT on imperfect demonstrations, DPO from the SFT model, exact evaluation.

Run:
  python scripts/train.py --config experiments/testbed/dpo.py --workdir runs/dpo
Variants:
  --config.dpo.loss_kwargs.beta=0.05      --config.dpo.loss_kwargs.label_smoothing=0.1 (cDPO)
  python scripts/train.py --config experiments/testbed/dpo.py:quick --workdir /tmp/q  (seconds)
"""
from prefjax.train.config import base_config


def get_config(arg=None):
  c = base_config()
  if arg == "quick":     # a laptop-sized smoke run: tiny everything
    c.testbed.n_sft, c.testbed.n_pairs, c.testbed.n_eval_pairs = 512, 256, 64
    c.sft.steps, c.dpo.steps = 20, 10
    c.eval.n_prompts, c.eval.n_samples = 32, 1
    c.checkpoint.every = 10
    c.model.overrides.n_layers = 2
  return c
