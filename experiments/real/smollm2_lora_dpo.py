"""LoRA DPO of SmolLM2-135M-Instruct on HH-RLHF: rank-8 adapters on every projection; the
frozen base is also the reference (one copy); adapters are merged into workdir/export/hf/.

  python scripts/train.py --config experiments/real/smollm2_lora_dpo.py --workdir runs/smollm2_lora
  python scripts/train.py --config experiments/real/smollm2_lora_dpo.py:quick --workdir /tmp/lq
"""
from prefjax.train.recipes import apply_options, real_config


def get_config(arg=None):
  c = real_config(stages=("dpo", "eval"))    # align the instruct model directly
  c.lora.rank, c.lora.alpha = 8, 16.0
  c.dpo.lr = 5e-4
  return apply_options(c, arg)
