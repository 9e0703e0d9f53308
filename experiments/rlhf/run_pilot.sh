#!/bin/bash
# Pilot of the RLHF study on the testbed: PPO (sequence RM), fine-grained PPO (token RM) and
# GRPO (oracle) from ONE shared SFT model per seed (its checkpoint is copied, so the SFT
# stage is restored, not retrained). Usage: bash experiments/rlhf/run_pilot.sh OUT SEED...
# Each run writes OUT/<method>_s<seed>/summary.json; collect with experiments/rlhf/collect.py.
set -e
OUT=$1; shift
PY=${PY:-python}   # EXTRA="--config.rl.iterations=30 ..." adds overrides to every run
for SEED in "$@"; do
  first=""
  for M in ppo fine_grained_ppo grpo; do
    W=$OUT/${M}_s$SEED
    if [ -n "$first" ] && [ ! -d "$W/checkpoints/sft" ]; then
      mkdir -p "$W/checkpoints" && cp -r "$first/checkpoints/sft" "$W/checkpoints/sft"
    fi
    $PY scripts/train.py --config experiments/testbed/$M.py --workdir "$W" \
        --config.seed=$SEED --config.progress=False $EXTRA > "$W.log" 2>&1
    first=${first:-$W}
  done
done
