#!/usr/bin/env bash
# SmolLM2-135M: 8 blocks vs 8 attention sublayers vs 8 MLP sublayers, through the command line only.
#
# 1. cut each variant with `layercut prune --method angular --granularity ...` into out/s8/<granularity>;
# 2. time all three and the dense model in one `layercut bench` run (prompt 512, 128 generated, batch 1, 8);
# 3. score each (and the dense model) with `layercut eval`: WikiText-2 test perplexity and the
#    6-task zero-shot suite on the first LIMIT items per task.
# Results: bench/speed/sublayers.{json,md} and bench/sublayers_eval/<name>.{json,md}.
# Usage: bash bench/sublayers_cli.sh [STEP...]   with STEP in prune, speed, eval (default: all three).
set -euo pipefail
cd "$(dirname "$0")/.."

LAYERCUT=${LAYERCUT:-.venv/bin/layercut}
DATA=../shared/data
LIMIT=${LIMIT:-100}
STEPS=${*:-prune speed eval}
TASKS=piqa,arc_easy,arc_challenge,boolq,winogrande,hellaswag

for step in $STEPS; do
  case $step in
    prune)
      for g in block attn mlp; do
        "$LAYERCUT" prune --model smollm2-135m --device cpu --method angular --granularity "$g" --cut 8 \
          --calib "$DATA/text/wikitext2_valid_tokenized.txt" --samples 8 --seq-len 256 \
          --out "out/s8/$g" --overwrite
      done ;;
    speed)
      mkdir -p bench/speed
      "$LAYERCUT" bench --model out/s8/block --also out/s8/attn --also out/s8/mlp --baseline smollm2-135m \
        --device cpu --prompt-len 512 --gen-len 128 --batch 1,8 --repeats 5 \
        --json bench/speed/sublayers.json --report bench/speed/sublayers.md --overwrite ;;
    eval)
      mkdir -p bench/sublayers_eval
      for name in smollm2-135m out/s8/block out/s8/attn out/s8/mlp; do
        "$LAYERCUT" eval --model "$name" --device cpu \
          --ppl "$DATA/text/wikitext2_raw_test.txt" --max-tokens 4096 --seq-len 256 \
          --tasks "$TASKS" --tasks-dir "$DATA/tasks" --limit "$LIMIT" --no-progress \
          --json "bench/sublayers_eval/$(basename "$name").json" \
          --report "bench/sublayers_eval/$(basename "$name").md" --overwrite
      done ;;
    *) echo "unknown step '$step': use prune, speed or eval" >&2; exit 2 ;;
  esac
done
