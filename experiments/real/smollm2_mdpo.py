"""mDPO / mIPO (arXiv 2410.12138) of SmolLM2-135M-Instruct on real groups: the AlpacaEval
annotations hold 16 models' responses to each of 805 instructions, each judged against one
baseline; per instruction the responses that beat the baseline form the chosen group and
the others the rejected group (``prefjax.data.file_sources``: alpaca_eval_groups), K <= 4 a side.

  python scripts/train.py --config experiments/real/smollm2_mdpo.py --workdir runs/smollm2_mdpo
  python scripts/train.py --config experiments/real/smollm2_mdpo.py:mipo --workdir runs/smollm2_mipo
  python scripts/train.py --config experiments/real/smollm2_mdpo.py:quick --workdir /tmp/mq
"""
from prefjax import assets
from prefjax.train.recipes import apply_options, real_config


def get_config(arg=None):
  c = real_config(stages=("dpo", "eval"))
  c.data.train = "alpaca_eval_groups:" + assets.shared_data("alpaca_eval/annotations")
  c.data.group_size = 4
  c.dpo.loss = "mdpo"
  c.dpo.batch_size = 2
  c.heldout.enabled = False              # held-out pairs come from groups' first samples
  return apply_options(c, arg)
