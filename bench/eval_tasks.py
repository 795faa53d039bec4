"""Benchmark: `layercut eval` against `lm_eval` on the same model, tasks, items and batch size.

Runs both command lines end to end (start-up, model load, data, scoring) as subprocesses with
the same thread count, records their wall times and accuracies, and prints markdown rows for
docs/BENCHMARKS.md. lm_eval reads the same local files through `layercut.evaluation.harness`.

    .venv/bin/python bench/eval_tasks.py --limit 200 --threads 1
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from layercut.evaluation.harness import PREFIX, write_harness_tasks
from layercut.loading import cache_dir

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT.parent / "shared" / "data" / "tasks"
TASKS = "piqa,arc_easy,arc_challenge,boolq,winogrande,hellaswag"


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command to completion (failing loudly); return its wall and CPU (user + system) seconds.

    CPU time is reported too because the benchmark machine is shared: wall time depends on what
    else runs, CPU time much less."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_layercut(args: argparse.Namespace, out: Path, env: dict[str, str]) -> tuple[tuple[float, float], dict[str, dict]]:
    target = out / "layercut.json"
    seconds = timed([str(ROOT / ".venv/bin/layercut"), "eval", "--model", "smollm2-135m", "--device", "cpu",
                     "--tasks", args.tasks, "--tasks-dir", str(TASKS_DIR), "--limit", str(args.limit),
                     "--batch-size", str(args.batch_size), "--no-progress", "--json", str(target), "--overwrite"],
                    env)
    tasks = json.loads(target.read_text())["model"]["tasks"]
    return seconds, {name: result["metrics"] for name, result in tasks.items()}


def run_lm_eval(args: argparse.Namespace, out: Path, env: dict[str, str]) -> tuple[tuple[float, float], dict[str, dict]]:
    configs = out / "lm_eval_tasks"
    names = write_harness_tasks(args.tasks.split(","), TASKS_DIR, configs)
    model_dir = cache_dir() / "smollm2-135m"
    seconds = timed([str(ROOT / ".venv/bin/lm_eval"), "run", "--model", "hf", "--model_args",
                     f"pretrained={model_dir},dtype=float32", "--device", "cpu", "--tasks", ",".join(names),
                     "--include_path", str(configs), "--limit", str(args.limit), "--batch_size",
                     str(args.batch_size), "--output_path", str(out / "lm_eval")], env)
    results = json.loads(Path(sorted(glob.glob(str(out / "lm_eval" / "**" / "results_*.json"),
                                               recursive=True))[-1]).read_text())["results"]
    return seconds, {name[len(PREFIX):]: {"acc": value["acc,none"], "acc_norm": value["acc_norm,none"]}
                     for name, value in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--tasks", default=TASKS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both tools")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="layercut-bench-") as tmp:
        out = Path(tmp)
        ours_s, ours = run_layercut(args, out, env)
        print(f"layercut: {ours_s[0]:.1f} s wall, {ours_s[1]:.1f} s CPU", flush=True)
        theirs_s, theirs = run_lm_eval(args, out, env)
    print("| task | layercut acc | lm_eval acc | layercut acc_norm | lm_eval acc_norm |")
    print("|---|---:|---:|---:|---:|")
    for name in args.tasks.split(","):
        print(f"| {name} | {100 * ours[name]['acc']:.1f} | {100 * theirs[name]['acc']:.1f} | "
              f"{100 * ours[name]['acc_norm']:.1f} | {100 * theirs[name]['acc_norm']:.1f} |")
    print("\n| | layercut | lm_eval | lm_eval / layercut |\n|---|---:|---:|---:|")
    for index, label in enumerate(("wall time (s)", "CPU time (s)")):
        print(f"| {label} | {ours_s[index]:.1f} | {theirs_s[index]:.1f} | {theirs_s[index] / ours_s[index]:.2f}x |")
    print(f"\nlimit {args.limit}, batch {args.batch_size}, {args.threads} thread(s), tasks {args.tasks}")


if __name__ == "__main__":
    main()
