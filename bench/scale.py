"""Scale benchmark: peak memory of in-memory vs onloaded calibration, and wall time of 1 vs 2 processes.

    python bench/scale.py                      # SmolLM2-135M, 32 windows x 256 tokens, writes bench/scale.json
    python bench/scale.py --samples 64 --skip-distributed
    python bench/scale.py --skip-peaks         # only the 1 vs 2 process timing

Each measurement runs in a fresh process. Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` of
that process, started through a small launcher because Linux carries a parent's peak RSS across
fork and exec. Both calibration modes run the pass `layercut prune --method replaceme-lstsq` runs
(span scores for every span plus the least-squares sums of every candidate cut) and the script
checks they agree. The distributed timing launches `torch.distributed.run` with 1 and 2 processes
(gloo on CPU, nccl on GPU) and times the calibration between two barriers, plus the whole launch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def calibration_pass(loaded, samples: int, seq_len: int, batch_size: int, cut: int):
    """The one-pass calibration of ReplaceMe-LS on the built-in calibration text."""
    from layercut.calibration.capture import calibrate
    from layercut.data import calibration_windows

    windows = calibration_windows(loaded.tokenizer, "builtin:pydoc-calib", samples, seq_len, 0)
    folds = list(range(0, loaded.num_layers - cut))
    return calibrate(loaded, windows, batch_size, cut=cut, fold_blocks=folds, progress=False)


def worker_peak(args: argparse.Namespace) -> None:
    """One calibration in this process; prints peak RSS, seconds and a checksum of the sums as JSON."""
    import torch

    from layercut.loading import load_model
    from layercut.onload import load_onloaded

    began = time.perf_counter()
    loaded = load_onloaded(args.model) if args.mode == "layers" else load_model(args.model, device="cpu")
    result = calibration_pass(loaded, args.samples, args.seq_len, args.batch_size, args.cut)
    seconds = time.perf_counter() - began
    checksum = float(result.scan.angular_sum.sum() + sum(fit.gram.trace() for fit in result.fits.values()))
    torch.save({"angular": result.scan.angular_sum, "gram": result.fits[min(result.fits)].gram}, args.dump)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "seconds": seconds, "checksum": checksum}))


def worker_distributed(args: argparse.Namespace) -> None:
    """Run under torch.distributed.run: time the calibration between barriers (rank 0 prints)."""
    import torch.distributed as dist

    from layercut.distributed import init_from_env, is_main_process, rank_and_world, shutdown
    from layercut.loading import load_model

    init_from_env()
    loaded = load_model(args.model, device="auto")
    if dist.is_initialized():
        dist.barrier()
    began = time.perf_counter()
    calibration_pass(loaded, args.samples, args.seq_len, args.batch_size, args.cut)
    if dist.is_initialized():
        dist.barrier()
    seconds = time.perf_counter() - began
    if is_main_process():
        print(json.dumps({"world": rank_and_world()[1], "calibration_seconds": seconds}))
    shutdown()


def run_json(command: list[str], env: dict[str, str] | None = None) -> tuple[dict, float]:
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - began


def measure_peaks(args: argparse.Namespace) -> dict:
    import torch

    results = {}
    for mode in ("memory", "layers"):
        dump = Path(args.out).with_suffix(f".{mode}.pt")
        command = [sys.executable, "-c", LAUNCHER, sys.executable, __file__, "worker-peak", "--mode", mode,
                   "--dump", str(dump), *common_flags(args)]
        results[mode], _ = run_json(command)
        results[mode]["sums"] = torch.load(dump, weights_only=True)
        dump.unlink()
    memory, layers = results["memory"].pop("sums"), results["layers"].pop("sums")
    gaps = {name: float(((layers[name] - memory[name]).abs().max() / memory[name].abs().max())) for name in memory}
    return {**results, "max_relative_gap": gaps,
            "peak_ratio_layers_over_memory": results["layers"]["peak_rss_mib"] / results["memory"]["peak_rss_mib"]}


def measure_distributed(args: argparse.Namespace) -> dict:
    results = {}
    cpus = os.cpu_count() or 2
    for world, threads in ((1, cpus), (1, max(1, cpus // 2)), (2, max(1, cpus // 2))):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
                   __file__, "worker-distributed", *common_flags(args)]
        timing, wall = run_json(command, env)
        results[f"{world}_process_{threads}_threads"] = {**timing, "threads_per_process": threads,
                                                          "launch_wall_seconds": wall}
    two = results[f"2_process_{max(1, cpus // 2)}_threads"]["calibration_seconds"]
    results["speedup_2_processes_over_1"] = results[f"1_process_{cpus}_threads"]["calibration_seconds"] / two
    return results


def common_flags(args: argparse.Namespace) -> list[str]:
    return ["--model", args.model, "--samples", str(args.samples), "--seq-len", str(args.seq_len),
            "--batch-size", str(args.batch_size), "--cut", str(args.cut)]


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", default="bench", choices=("bench", "worker-peak", "worker-distributed"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cut", type=int, default=8)
    parser.add_argument("--mode", choices=("memory", "layers"), default="memory")
    parser.add_argument("--dump", default="")
    parser.add_argument("--skip-distributed", action="store_true")
    parser.add_argument("--skip-peaks", action="store_true", help="keep the peak-memory results already in --out")
    parser.add_argument("--out", default=str(Path(__file__).with_name("scale.json")))
    args = parser.parse_args()
    if args.role == "worker-peak":
        return worker_peak(args)
    if args.role == "worker-distributed":
        return worker_distributed(args)
    previous = json.loads(Path(args.out).read_text()) if args.skip_peaks and Path(args.out).is_file() else {}
    report = {"machine": machine(), "settings": {k: v for k, v in vars(args).items() if k not in ("role", "dump")},
              "peak_memory": previous.get("peak_memory") if args.skip_peaks else measure_peaks(args)}
    Path(args.out).write_text(json.dumps(report, indent=2))
    if not args.skip_distributed:
        report["distributed"] = measure_distributed(args)
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
