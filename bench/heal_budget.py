"""Healing at a fixed time budget: which training scope and mode heals a cut model best per CPU-minute.

Every variant starts from the same pruned model, trains for the same wall-clock budget on the same
mix of allowed text (distilled from the same dense teacher), and is then scored on WikiText-2 test,
on Python reference text it never saw (`builtin:pydoc-eval`) and on zero-shot tasks, against the
dense model on the same items. Training speed (tokens/s, wall and CPU) comes from the same command.

    python bench/heal_budget.py --model out/cut8 --teacher smollm2-135m --minutes 5 \
        --variants lora:all,full:auto,lora:auto --json bench/heal_budget.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from layercut.commands.common import seed_everything
from layercut.evaluation.perplexity import text_perplexity
from layercut.evaluation.tasks import load_task
from layercut.evaluation.zeroshot import evaluate_task
from layercut.healing.trainer import build_config, heal
from layercut.loading import load_model

SHARED = Path(os.environ.get("SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
TRAIN = [str(SHARED / "text" / "wikitext2_valid_tokenized.txt"), "builtin:pydoc-calib"]
TEST = str(SHARED / "text" / "wikitext2_raw_test.txt")
TASKS = ("arc_easy", "piqa", "hellaswag")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the pruned model to heal")
    parser.add_argument("--teacher", default="smollm2-135m")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall-clock budget per variant")
    parser.add_argument("--variants", default="lora:all,full:auto,lora:auto",
                        help="MODE:SCOPE[:LR[:KD]] items; SCOPE is all or auto (--train-from)")
    parser.add_argument("--kd-weight", type=float, default=0.7)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit", type=int, default=300, help="items per zero-shot task")
    parser.add_argument("--dense", action="store_true", help="also score the teacher")
    parser.add_argument("--speed-only", action="store_true", help="train only: tokens/s, no scores")
    parser.add_argument("--json", default="bench/heal_budget.json")
    return parser.parse_args()


def scores(loaded, limit: int, tasks: tuple[str, ...] = TASKS, pydoc_tokens: int = 32768) -> dict:
    """WikiText-2 test (15,104 tokens, windows of 256), pydoc-eval (windows of 2,048), zero-shot tasks."""
    wiki = text_perplexity(loaded, TEST, seq_len=256, max_tokens=15104, progress=False).perplexity
    pydoc = text_perplexity(loaded, "builtin:pydoc-eval", max_tokens=pydoc_tokens, progress=False).perplexity
    accuracy = {}
    for name in tasks:
        task = load_task(name, SHARED / "tasks", limit=limit)
        accuracy[name] = evaluate_task(loaded, task, 16, False).score
    return {"wikitext2_ppl": wiki, "pydoc_eval_ppl": pydoc, "tasks": accuracy, "task_sum": sum(accuracy.values())}


def main() -> None:
    args = parse_args()
    pruned = load_model(args.model, dtype="float32", device="cpu")
    teacher = load_model(args.teacher, dtype="float32", device="cpu")
    rows = []
    if args.dense:
        rows.append({"variant": "dense (teacher)", **scores(teacher, args.limit)})
    if not args.speed_only:
        rows.append({"variant": "cut, not healed", **scores(pruned, args.limit)})
    for spec in args.variants.split(","):
        mode, scope, *rest = spec.split(":")
        lr = float(rest[0]) if rest else None
        kd = float(rest[1]) if len(rest) > 1 else args.kd_weight
        seed_everything(0)
        student = copy.deepcopy(pruned)
        config = build_config(data=TRAIN, mode=mode, lr=lr, teacher=args.teacher, kd_weight=kd,
                              train_from=None if scope == "all" else scope, seq_len=args.seq_len,
                              batch_size=args.batch_size, warmup=10, tokens=10_000_000,
                              max_seconds=args.minutes * 60, progress=False)
        cpu = time.process_time()
        result = heal(student, config, teacher=teacher)
        cpu = time.process_time() - cpu
        row = {"variant": spec, "mode": mode, "train_from": result.train_from, "lr": config.peak_lr, "kd_weight": kd,
               "steps": result.steps, "tokens": result.tokens, "train_seconds": result.train_seconds,
               "cpu_seconds": round(cpu, 1), "tokens_per_second": result.tokens_per_second,
               "tokens_per_cpu_second": round(result.tokens / cpu, 1),
               **({} if args.speed_only else scores(student, args.limit))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "args": vars(args), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
              "rows": rows}
    Path(args.json).write_text(json.dumps(record, indent=2))
    print("| variant | train from | steps | tokens | tokens/s (wall) | tokens per CPU-s | WikiText-2 | pydoc-eval | "
          + " | ".join(TASKS) + " | task sum |")
    print("|" + "---|" * (9 + len(TASKS)))
    for row in rows:
        quality = (f"{row['wikitext2_ppl']:.2f} | {row['pydoc_eval_ppl']:.2f} | "
                   + " | ".join(f"{row['tasks'][t]:.3f}" for t in TASKS) + f" | {row['task_sum']:.3f}"
                   if "tasks" in row else " | ".join([""] * (3 + len(TASKS))))
        print(f"| {row['variant']} | {row.get('train_from', '')} | {row.get('steps', '')} | {row.get('tokens', '')} | "
              f"{row.get('tokens_per_second', '')} | {row.get('tokens_per_cpu_second', '')} | {quality} |")


if __name__ == "__main__":
    main()
