"""Healing curve: quality of one healing run after each token milestone, against tokens and CPU time.

One run (one learning-rate schedule planned for the last milestone) is stopped at every milestone the
way Ctrl-C stops it: a checkpoint is saved and the LoRA matrices are merged. That model is scored
(WikiText-2 test, Python reference text healing never saw, zero-shot tasks against the dense model on
the same items), then a fresh copy of the cut model resumes from the checkpoint, bit-exactly, to the
next milestone. Tokens, wall and CPU seconds of training are cumulative.

    python bench/heal_curve.py --model out/cut8 --milestones 50000,100000,200000,350000,500000 \
        --json bench/heal_curve.json

With --checkpoints HEAL_DIR it trains nothing: it scores the LoRA checkpoints a finished `heal` run left
in HEAL_DIR (checkpoint-NNNNNN, from --save-every), rebuilt on --model (the model that run started
from) and merged, plus that run's final model (HEAL_DIR itself); tokens and training seconds come from
the run's log. A checkpoint of the last step scores exactly as the final model (checked on a tiny run).

    python bench/heal_curve.py --model out/ship/01-prune --checkpoints out/ship/02-heal --json bench/ship_curve.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch
from heal_budget import TRAIN, scores

import layercut.healing.trainer as trainer
from layercut.commands.common import seed_everything
from layercut.healing.state import CHECKPOINT_PREFIX
from layercut.healing.trainer import build_config, heal
from layercut.loading import load_model

TASKS = ("arc_easy", "piqa", "hellaswag", "openbook_qa")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the pruned model to heal")
    parser.add_argument("--teacher", default="smollm2-135m")
    parser.add_argument("--milestones", default="50000,100000,200000,350000,500000", help="training tokens")
    parser.add_argument("--mode", choices=("full", "lora"), default="lora")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--kd-weight", type=float, default=0.7)
    parser.add_argument("--hidden-kd-weight", type=float, default=0.0)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--limit", type=int, default=300, help="items per zero-shot task")
    parser.add_argument("--pydoc-tokens", type=int, default=8192, help="tokens of builtin:pydoc-eval scored")
    parser.add_argument("--checkpoints", default=None, help="score a finished LoRA heal run's checkpoints instead")
    parser.add_argument("--lora-rank", type=int, default=16, help="LoRA rank trained (or of the --checkpoints run)")
    parser.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha trained (or of that run)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA, healing autocasts to bf16)")
    parser.add_argument("--json", default="bench/heal_curve.json")
    return parser.parse_args()


def stop_at(step: int):
    """A train_step that raises KeyboardInterrupt before optimizer step `step` (0-based), as Ctrl-C would."""
    real = trainer.train_step

    def step_or_stop(run, index):
        if index == step:
            raise KeyboardInterrupt
        return real(run, index)
    return real, step_or_stop


def from_checkpoint(base: str, checkpoint: Path, rank: int, alpha: float, device: str = "cpu"):
    """The model `base` with the LoRA matrices of a heal checkpoint, merged (as heal itself exports it)."""
    from layercut.healing.lora import add_lora, merge_lora
    from layercut.healing.state import copy_weights, read_checkpoint_weights

    loaded = load_model(base, dtype="float32", device=device)
    wrapped = add_lora(loaded.model, loaded.adapter, rank, alpha, 0.0)
    copy_weights(wrapped, read_checkpoint_weights(checkpoint, wrapped))
    loaded.model = merge_lora(wrapped).eval()
    return loaded


def scored_checkpoints(args: argparse.Namespace) -> list[dict]:
    """Rows for every checkpoint of a finished run and its final model, from the run's own log."""
    run = Path(args.checkpoints)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    by_step = {record["step"]: record for record in log}
    points = [(int(path.name.removeprefix(CHECKPOINT_PREFIX)), path)
              for path in sorted(run.glob(f"{CHECKPOINT_PREFIX}*"))]
    rows = []
    if not points or points[-1][0] != log[-1]["step"]:
        points.append((log[-1]["step"], None))  # the run's exported model (none of its checkpoints is the end)
    for step, path in points:
        model = (from_checkpoint(args.model, path, args.lora_rank, args.lora_alpha, args.device) if path is not None
                 else load_model(str(run), dtype="float32", device=args.device))
        row = {"tokens": by_step[step]["tokens"], "steps": step, "train_seconds": by_step[step]["seconds"],
               "cpu_seconds": None, **scores(model, args.limit, TASKS, args.pydoc_tokens)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def retention(row: dict, dense: dict) -> float:
    return row["task_sum"] / dense["task_sum"]


def plot(rows: list[dict], dense: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4))
    FigureCanvasAgg(figure)
    ppl, tasks, speed = figure.subplots(1, 3)
    tokens = [r["tokens"] / 1e6 for r in rows]
    for key, label in (("wikitext2_ppl", "WikiText-2 test"), ("pydoc_eval_ppl", "pydoc-eval")):
        ppl.plot(tokens, [r[key] / dense[key] for r in rows], marker="o", label=label)
    ppl.axhline(1.0, color="grey", linewidth=0.8)
    ppl.set(xlabel="training tokens (M)", ylabel="perplexity / dense", title="perplexity")
    ppl.legend(fontsize=8)
    kept = [100 * retention(r, dense) for r in rows]
    tasks.plot(tokens, kept, marker="o")
    tasks.axhline(95.0, color="grey", linestyle="--", linewidth=0.8, label="issue 14 target")
    tasks.set_ylim(min(85.0, min(kept) - 2.0), 100.0)
    tasks.legend(fontsize=8)
    tasks.set(xlabel="training tokens (M)", ylabel="% of dense (summed accuracy)",
              title=f"zero-shot retention ({', '.join(TASKS)})")
    use_cpu = all(r["cpu_seconds"] is not None for r in rows)
    minutes = [(r["cpu_seconds"] if use_cpu else r["train_seconds"]) / 60 for r in rows]
    for key, label in (("wikitext2_ppl", "WikiText-2"), ("pydoc_eval_ppl", "pydoc-eval")):
        speed.plot(minutes, [r[key] / dense[key] for r in rows], marker="o", label=label)
    speed.set(xlabel="training CPU-minutes (all threads)" if use_cpu else "training minutes (wall)",
              ylabel="perplexity / dense", title="per minute of training")
    speed.legend(fontsize=8)
    for axis in (ppl, tasks, speed):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    milestones = sorted(int(m) for m in args.milestones.split(","))
    teacher = load_model(args.teacher, dtype="float32", device=args.device)
    dense = {"variant": "dense", **scores(teacher, args.limit, TASKS, args.pydoc_tokens)}
    print(json.dumps(dense), flush=True)
    cut = load_model(args.model, dtype="float32", device=args.device)
    rows = [{"tokens": 0, "train_seconds": 0.0, "cpu_seconds": 0.0, **scores(cut, args.limit, TASKS, args.pydoc_tokens)}]
    print(json.dumps(rows[0]), flush=True)
    if args.checkpoints:
        write(args, dense, rows + scored_checkpoints(args))
        return
    work = Path(tempfile.mkdtemp(prefix="heal-curve-"))
    config = build_config(data=TRAIN, mode=args.mode, lr=args.lr, teacher=args.teacher, kd_weight=args.kd_weight,
                          hidden_kd_weight=args.hidden_kd_weight, seq_len=args.seq_len, batch_size=args.batch_size,
                          lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, warmup=10, tokens=milestones[-1],
                          work_dir=str(work), progress=False)
    resume, cpu = None, 0.0
    for milestone in milestones:
        seed_everything(0)
        student = load_model(args.model, dtype="float32", device=args.device)
        real, step_or_stop = stop_at(milestone // config.tokens_per_step)
        trainer.train_step = step_or_stop
        started = time.process_time()
        try:
            result = heal(student, config.model_copy(update={"resume": resume}), teacher=teacher)
        finally:
            trainer.train_step = real
        cpu += time.process_time() - started
        resume = result.checkpoint
        row = {"tokens": result.tokens, "steps": result.steps, "train_seconds": result.train_seconds,
               "cpu_seconds": round(cpu, 1), **scores(student, args.limit, TASKS, args.pydoc_tokens)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    write(args, dense, rows)


def recorded_args(args: argparse.Namespace) -> dict:
    """The settings that shaped the result: scoring only for --checkpoints (the run's own card has its
    training settings), everything otherwise."""
    values = vars(args)
    if not args.checkpoints:
        return values
    return {k: values[k] for k in ("model", "teacher", "checkpoints", "lora_rank", "lora_alpha", "limit",
                                   "pydoc_tokens", "json")}


def write(args: argparse.Namespace, dense: dict, rows: list[dict]) -> None:
    """The JSON record, the PNG next to it and a markdown table on stdout."""
    gpu = f", {torch.cuda.get_device_name(0)}" if args.device.startswith("cuda") else ""
    record = {"machine": f"{platform.machine()}{gpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "args": recorded_args(args), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
              "dense": dense, "rows": rows}
    Path(args.json).write_text(json.dumps(record, indent=2))
    plot(rows, dense, Path(args.json).with_suffix(".png"))
    print("| tokens | train wall s | train CPU s | WikiText-2 (x dense) | pydoc-eval (x dense) | "
          + " | ".join(TASKS) + " | retention |")
    print("|" + "---:|" * (6 + len(TASKS)))
    for row in rows:
        cpu = "" if row["cpu_seconds"] is None else f"{row['cpu_seconds']:.0f}"
        print(f"| {row['tokens']:,} | {row['train_seconds']:.0f} | {cpu} | "
              f"{row['wikitext2_ppl']:.2f} ({row['wikitext2_ppl'] / dense['wikitext2_ppl']:.2f}) | "
              f"{row['pydoc_eval_ppl']:.2f} ({row['pydoc_eval_ppl'] / dense['pydoc_eval_ppl']:.2f}) | "
              + " | ".join(f"{row['tasks'][t]:.3f}" for t in TASKS) + f" | {100 * retention(row, dense):.1f}% |")


if __name__ == "__main__":
    main()
