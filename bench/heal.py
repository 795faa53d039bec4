"""Benchmark of healing (LayerChop) on SmolLM2-135M: cut 8 of 30 blocks, heal, measure.

The cut is the span with the lowest angular distance (`layercut prune --method angular`), also
shown: LayerChop's own choice (`chop_layers`) and ReplaceMe LS (`--method replaceme-lstsq`) on
the same calibration windows. The angular-cut model is healed on the calibration text for a
fixed token budget, once with full fine-tuning and once with LoRA; every model is scored by
WikiText-2 test perplexity on the same windows. Results go to a JSON file and a Markdown table.

    python bench/heal.py --steps 40 --seq-len 128 --batch-size 4
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from layercut.commands.common import seed_everything
from layercut.data import calibration_windows
from layercut.evaluation.perplexity import text_perplexity
from layercut.healing.trainer import build_config, heal
from layercut.loading import LoadedModel, load_model
from layercut.methods.chop import chop_layers
from layercut.prune import PruneRequest, prune
from layercut.surgery import remove_blocks

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
TRAIN_TEXT = SHARED_TEXT / "wikitext2_valid_tokenized.txt"
TEST_TEXT = SHARED_TEXT / "wikitext2_raw_test.txt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut", type=int, default=8)
    parser.add_argument("--calib-samples", type=int, default=32, help="calibration windows of 256 tokens for the cut")
    parser.add_argument("--steps", type=int, default=40, help="healing optimizer steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--full-lr", type=float, default=1e-4)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--eval-max-tokens", type=int, default=8192)
    parser.add_argument("--json", default="bench/heal.json")
    return parser.parse_args()


def test_ppl(loaded: LoadedModel, args: argparse.Namespace) -> float:
    return text_perplexity(loaded, str(TEST_TEXT), seq_len=args.eval_seq_len, max_tokens=args.eval_max_tokens,
                           progress=False).perplexity


def heal_row(pruned: LoadedModel, mode: str, lr: float, args: argparse.Namespace) -> dict:
    model = copy.deepcopy(pruned)
    config = build_config(data=str(TRAIN_TEXT), mode=mode, steps=args.steps, lr=lr, warmup=max(1, args.steps // 10),
                          batch_size=args.batch_size, seq_len=args.seq_len, progress=False)
    result = heal(model, config)
    return {"name": f"angular cut + heal ({mode})", "ppl": test_ppl(model, args), "layers": model.num_layers,
            "train_tokens": result.tokens, "train_seconds": result.train_seconds,
            "tokens_per_second": result.tokens_per_second, "final_train_loss": result.final_loss, "lr": lr}


def main() -> None:
    args = parse_args()
    seed_everything(0)
    began = time.perf_counter()
    dense = load_model("smollm2-135m", dtype="float32", device="cpu")
    windows = calibration_windows(dense.tokenizer, str(TRAIN_TEXT), args.calib_samples, 256, seed=0)
    rows = [{"name": "dense (baseline)", "ppl": test_ppl(dense, args), "layers": dense.num_layers}]
    print(rows[-1], flush=True)

    pruned = copy.deepcopy(dense)
    outcome = prune(pruned, windows, PruneRequest(method="angular", cut=args.cut, progress=False))
    rows.append({"name": "angular cut", "ppl": test_ppl(pruned, args), "layers": pruned.num_layers,
                 "removed": outcome.removed})
    print(rows[-1], flush=True)

    chopped = copy.deepcopy(dense)
    removed = remove_blocks(chopped, chop_layers(dense.num_layers, args.cut))
    rows.append({"name": "LayerChop cut (chop_layers)", "ppl": test_ppl(chopped, args), "layers": chopped.num_layers,
                 "removed": removed})
    print(rows[-1], flush=True)
    del chopped

    replaced = copy.deepcopy(dense)
    outcome = prune(replaced, windows, PruneRequest(method="replaceme-lstsq", cut=args.cut, progress=False))
    rows.append({"name": "ReplaceMe LS", "ppl": test_ppl(replaced, args), "layers": replaced.num_layers,
                 "removed": outcome.removed})
    print(rows[-1], flush=True)
    del replaced, dense

    rows.append(heal_row(pruned, "full", args.full_lr, args))
    print(rows[-1], flush=True)
    rows.append(heal_row(pruned, "lora", args.lora_lr, args))
    print(rows[-1], flush=True)

    baseline = rows[0]["ppl"]
    for row in rows:
        row["ppl_vs_dense"] = row["ppl"] / baseline
    record = {"args": vars(args), "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads, no GPU",
              "torch": torch.__version__, "seconds": round(time.perf_counter() - began, 1), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(record, indent=2))
    print("| model | layers | WikiText-2 test ppl | vs dense | train tokens | tokens/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['name']} | {row['layers']} | {row['ppl']:.2f} | {row['ppl_vs_dense']:.2f}x | "
              f"{row.get('train_tokens', '')} | {row.get('tokens_per_second', '')} |")


if __name__ == "__main__":
    main()
