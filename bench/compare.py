"""Benchmark: every depth-pruning method on SmolLM2-135M, cut 8 of 30, in one `layercut compare` run.

Calibration: WikiText-2 validation (pre-tokenised text). Evaluation: WikiText-2 test perplexity on
a stated token budget and, with --limit N > 0, the 6-task zero-shot suite (first N items of each task). Writes
bench/compare.md, bench/compare.json and bench/compare.png; the table lists the time each method took.

    python bench/compare.py --samples 16 --max-tokens 4096 --limit 0      # perplexity only
    python bench/compare.py --limit 100                                   # with the 6-task mean
    python bench/compare.py --limit 500 --name compare_500                # firmer zero-shot numbers
"""

from __future__ import annotations

import argparse
from pathlib import Path

from layercut.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HERE = Path(__file__).resolve().parent
METHODS = "angular,shortgpt,last,random,replaceme-lstsq,replaceme-cosine,streamline-ffn,streamline-layer"
TASKS = "piqa,arc_easy,arc_challenge,boolq,winogrande,hellaswag"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut", type=int, default=8)
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--samples", type=int, default=16, help="calibration windows of --seq-len tokens")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=4096, help="WikiText-2 test tokens for perplexity")
    parser.add_argument("--limit", type=int, default=0, help="items per zero-shot task (0: no tasks)")
    parser.add_argument("--epochs", type=int, default=5, help="LLM-Streamline training epochs")
    parser.add_argument("--train-batch-tokens", type=int, default=256, help="LLM-Streamline tokens per step")
    parser.add_argument("--name", default="compare", help="results go to bench/NAME.md, .json and .png")
    return parser.parse_args()


def main_bench() -> int:
    args = parse_args()
    tasks = ["--tasks", TASKS, "--tasks-dir", str(SHARED / "tasks"), "--limit", str(args.limit)] if args.limit else []
    return main(["compare", "--model", "smollm2-135m", "--device", "cpu", "--cut", str(args.cut),
                 "--methods", args.methods,
                 "--calib", str(SHARED / "text" / "wikitext2_valid_tokenized.txt"), "--samples", str(args.samples),
                 "--seq-len", str(args.seq_len),
                 "--ppl", str(SHARED / "text" / "wikitext2_raw_test.txt"), "--max-tokens", str(args.max_tokens),
                 "--eval-seq-len", "256", *tasks, "--epochs", str(args.epochs),
                 "--train-batch-tokens", str(args.train_batch_tokens),
                 "--report", str(HERE / f"{args.name}.md"), "--json", str(HERE / f"{args.name}.json"),
                 "--plot", str(HERE / f"{args.name}.png"), "--overwrite", "--no-progress"])


if __name__ == "__main__":
    raise SystemExit(main_bench())
