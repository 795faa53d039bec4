#!/usr/bin/env bash
# Healing curves of the ship cut on a lent GPU (issue 14 item 1): WikiText-2 / pydoc-eval perplexity and
# four-task zero-shot retention after 0.1M-2M training tokens, for LoRA and for full training. Run from the
# repository root after bench/gpu_check.sh (same Python, same carried data: ../shared/data/text and tasks):
#   bash bench/gpu_curves.sh                  # output in out/gpu_curves: curve-<mode>.json / .png
# 1. the ship recipe's cut (LLM-Streamline, blocks 10-18 -> one trained layer, 30 -> 22 layers), in float32;
# 2. for each mode in MODES: bench/heal_curve.py with the recipe's distillation (KD 0.7, hidden KD 1.0) and
#    LoRA rank 64 (alpha 128), data WikiText-2 validation + pydoc-calib (once, not the recipe's three times),
#    one schedule planned for the last milestone, stopped and scored at each milestone.
# Batch BATCH x 256 tokens (16: a GPU is idle at the CPU recipe's 4). About 4-5 minutes per mode on an H200,
# most of it scoring; MODES=lora or MODES=full splits the work over two calls. LIMIT sets items per task;
# DEVICE=cpu MILESTONES=2048 LIMIT=20 PYDOC_TOKENS=2048 MODES=lora checks the script on a CPU.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-out/gpu_curves}
SHARED=${SHARED_DATA:-../shared/data}
DEVICE=${DEVICE:-cuda}
MILESTONES=${MILESTONES:-100000,250000,500000,1000000,2000000}
MODES=${MODES:-lora full}
BATCH=${BATCH:-16}
LIMIT=${LIMIT:-300}
PYDOC_TOKENS=${PYDOC_TOKENS:-32768}
started=$(date +%s)

mkdir -p "$OUT"
if [[ ! -f "$OUT/cut/config.json" ]]; then
    echo "== the ship cut"
    "$PYTHON" -m layercut prune --model smollm2-135m --device "$DEVICE" --dtype float32 --method streamline-layer \
        --cut 9 --epochs 5 --train-batch-tokens 256 --calib "$SHARED/text/wikitext2_valid_tokenized.txt" \
        --calib builtin:pydoc-calib --samples 64 --seq-len 256 --no-progress --out "$OUT/cut" --overwrite
fi
for mode in $MODES; do
    echo "== $mode curve: $MILESTONES tokens"
    "$PYTHON" bench/heal_curve.py --model "$OUT/cut" --device "$DEVICE" --mode "$mode" --hidden-kd-weight 1.0 \
        --lora-rank 64 --lora-alpha 128 \
        --batch-size "$BATCH" --milestones "$MILESTONES" --limit "$LIMIT" --pydoc-tokens "$PYDOC_TOKENS" \
        --json "$OUT/curve-$mode.json" | grep -v '^{'
done
echo "total $(( $(date +%s) - started )) s"
