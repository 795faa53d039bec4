#!/usr/bin/env bash
# The Llama-family reference for bench/gemma_postnorm.py: SmolLM2-135M at the same cut fraction
# (4/18 of Gemma-3-270m's blocks ~ 7 of SmolLM2's 30), same calibration (32 x 128 windows of
# WikiText-2 validation) and the same perplexity protocol (first 8,192 tokens of WikiText-2 test,
# 512-token windows). Usage: OMP_NUM_THREADS=1 PYTHONPATH=src bench/gemma_postnorm_smollm2.sh OUTDIR
set -euo pipefail
out=${1:?output directory}
py=${PYTHON:-/work/main/.venv/bin/python}
data=$(cd "$(dirname "$0")/../.." && pwd)/shared/data/text
mkdir -p "$out"
"$py" -m layercut eval --model smollm2-135m --device cpu --ppl "$data/wikitext2_raw_test.txt" --max-tokens 8192 \
  --seq-len 512 --json "$out/dense.json"
for method in angular replaceme-lstsq replaceme-cosine; do
  "$py" -m layercut prune --model smollm2-135m --device cpu --method "$method" --cut 7 --samples 32 --seq-len 128 \
    --calib "$data/wikitext2_valid_tokenized.txt" --out "$out/$method"
  "$py" -m layercut eval --model "$out/$method" --device cpu --ppl "$data/wikitext2_raw_test.txt" --max-tokens 8192 \
    --seq-len 512 --json "$out/$method.json"
done
