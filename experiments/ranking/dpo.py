"""Testbed DPO for the ranking-accuracy studies: checkpoints every 25 steps, all kept.

Run (study a, DPO; study b, the attenuated objective dpo_gamma):
  python scripts/train.py --config experiments/ranking/dpo.py --workdir runs/rank_dpo
  python scripts/train.py --config experiments/ranking/dpo.py:0.5 --workdir runs/rank_g0.5
The argument is gamma of ``dpo_gamma`` (1 = DPO). Ranking accuracy on 512 training pairs and
the 256 held-out pairs is logged at every checkpoint (``config.ranking``).
"""
from prefjax.train.config import base_config


def get_config(arg=None):
  c = base_config()
  c.checkpoint.every, c.checkpoint.keep = 25, 100
  c.ranking.every, c.ranking.n_train = 25, 512
  # CPU budget (2 shared cores): SFT = the first 175 steps of the default 400-step schedule
  # (a run of 400 that was stopped at its step-175 checkpoint restores to the same model),
  # DPO 100 steps.
  c.sft.steps, c.dpo.steps = 175, 100
  if arg is not None:
    c.dpo.loss = "dpo_gamma"
    c.dpo.loss_kwargs = dict(beta=c.dpo.loss_kwargs.beta, gamma=float(arg))
  return c
