#!/usr/bin/env bash
# GPU readiness check (issue 14 item 4), under 8 minutes on one GPU. Run from the repository root:
#   bash bench/gpu_check.sh                 # PYTHON=.venv/bin/python, output in out/gpu_check
# 1. the CUDA-marked tests (tests/test_cuda.py) and the GPU+CPU block-split test;
# 2. for each model in MODELS (default: SmolLM2-135M cut 8 of 30, Gemma-3-270m cut 4 of 18): a bf16
#    ReplaceMe LS prune, a logit-distillation heal from the dense model under bf16 autocast (at most
#    HEAL_MINUTES), and the perplexity of dense / pruned / healed on WikiText-2 test (59 x 256 tokens) and
#    builtin:pydoc-eval (32,768 tokens), each evaluation in the device's default dtype (bf16 on CUDA);
# then prints one table and writes it to $OUT/table.md.
# TESTS=0 skips step 1. DEVICE=cpu runs the same steps on the CPU, to check the script itself where no GPU
# is lent (use a small HEAL_MINUTES and MODELS=smollm2-135m). `bash -n bench/gpu_check.sh` checks the syntax.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-out/gpu_check}
SHARED=${SHARED_DATA:-../shared/data}
DEVICE=${DEVICE:-cuda}
HEAL_MINUTES=${HEAL_MINUTES:-1.5}
MODELS=${MODELS:-smollm2-135m gemma3-270m}
TESTS=${TESTS:-1}
LAYERCUT=("$PYTHON" -m layercut)
started=$(date +%s)

declare -A CUT=([smollm2-135m]=8 [gemma3-270m]=4)

"$PYTHON" - <<'EOF'
import torch, transformers
print(f"torch {torch.__version__}, transformers {transformers.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}" if torch.cuda.is_available() else ""))
EOF
[[ "$DEVICE" == cuda ]] && "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: nothing to check here')"

mkdir -p "$OUT"
calib="$SHARED/text/wikitext2_valid_tokenized.txt"
wiki="$SHARED/text/wikitext2_raw_test.txt"
[[ -f "$calib" ]] || calib=builtin:pydoc-calib
texts=(builtin:pydoc-eval)
[[ -f "$wiki" ]] && texts=("$wiki" builtin:pydoc-eval)

if [[ "$DEVICE" == cuda && "$TESTS" == 1 ]]; then
    echo "== CUDA tests"
    timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_onload.py \
        -k "cuda or gpu" 2>&1 | tee "$OUT/tests.log" | tail -3 || true
fi

eval_ppl() {  # model, row name -> one JSON per text
    local model=$1 name=$2 index=0
    for text in "${texts[@]}"; do
        index=$((index + 1))
        local extra=(--max-tokens 32768)
        [[ "$text" == "$wiki" ]] && extra=(--max-tokens 15104 --seq-len 256)
        timeout 180 "${LAYERCUT[@]}" eval --model "$model" --device "$DEVICE" --ppl "$text" "${extra[@]}" \
            --no-progress --no-record --no-cache --json "$OUT/eval-$name-$index.json" --overwrite > /dev/null \
            || echo "eval of $name on $text failed"
    done
}

rows=()
for model in $MODELS; do
    cut=${CUT[$model]:-4}
    echo "== $model: bf16 ReplaceMe LS prune (cut $cut), KD heal, eval"
    t0=$(date +%s)
    if ! timeout 240 "${LAYERCUT[@]}" prune --model "$model" --device "$DEVICE" --dtype bfloat16 \
        --method replaceme-lstsq --cut "$cut" --calib "$calib" --samples 64 --seq-len 256 \
        --out "$OUT/$model-pruned" --overwrite > "$OUT/$model-prune.log" 2>&1; then
        echo "$model prune failed: $(tail -1 "$OUT/$model-prune.log")"
        continue
    fi
    t1=$(date +%s)
    timeout 300 "${LAYERCUT[@]}" heal --model "$OUT/$model-pruned" --device "$DEVICE" --data "$calib" \
        --data builtin:pydoc-calib --mode full --teacher "$model" --kd-weight 0.5 --tokens 2000000 \
        --max-minutes "$HEAL_MINUTES" --seq-len 256 --batch-size 16 --precision bf16 --no-progress \
        --out "$OUT/$model-healed" --overwrite > "$OUT/$model-heal.json" 2> "$OUT/$model-heal.log" \
        || echo "$model heal failed: $(tail -1 "$OUT/$model-heal.log")"
    t2=$(date +%s)
    echo "$((t1 - t0)) $((t2 - t1))" > "$OUT/$model-seconds.txt"
    eval_ppl "$model" "$model-dense"
    eval_ppl "$OUT/$model-pruned" "$model-pruned"
    [[ -d "$OUT/$model-healed" ]] && eval_ppl "$OUT/$model-healed" "$model-healed"
    rows+=("$model")
done

"$PYTHON" - "$OUT" "$DEVICE" "${rows[@]}" <<'EOF' | tee "$OUT/table.md"
import json, sys
from pathlib import Path

out, device, models = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]


def ppl(name: str, index: int) -> str:
    path = out / f"eval-{name}-{index}.json"
    if not path.is_file():
        return "-"
    report = json.loads(path.read_text())
    return f"{report['model']['perplexity']['perplexity']:.2f}"


print(f"| model ({device}, bf16) | stage | WikiText-2 test ppl | pydoc-eval ppl | seconds | heal tokens | heal tokens/s |")
print("|---|---|---:|---:|---:|---:|---:|")
for model in models:
    prune_s, heal_s = (out / f"{model}-seconds.txt").read_text().split()
    heal_path = out / f"{model}-heal.json"
    heal = json.loads(heal_path.read_text()) if heal_path.is_file() and heal_path.stat().st_size else {}
    for stage, seconds in (("dense", "-"), ("pruned", prune_s), ("healed", heal_s)):
        tokens = f"{heal.get('tokens', 0):,}" if stage == "healed" else "-"
        speed = f"{heal.get('tokens_per_second', 0):,.0f}" if stage == "healed" else "-"
        print(f"| {model} | {stage} | {ppl(f'{model}-{stage}', 1)} | {ppl(f'{model}-{stage}', 2)} | {seconds} "
              f"| {tokens} | {speed} |")
EOF
echo "total $(( $(date +%s) - started )) s"
