"""Benchmark ReplaceMe on SmolLM2-135M: perplexity of dense vs angular drop vs LS vs cosine, prune
wall time as a ratio to one plain forward pass over the same calibration tokens, and peak memory.

Each measurement runs in its own subprocess so its peak RSS is its own. Usage:
    .venv/bin/python bench/replaceme.py [--samples 128 --seq-len 256 --cut 8 --max-tokens 65536]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

DATA = "../shared/data/text"


def child(args: argparse.Namespace) -> dict:
    import torch

    from layercut.data import calibration_windows
    from layercut.evaluation.perplexity import text_perplexity
    from layercut.loading import load_model
    from layercut.prune import PruneRequest, prune

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m", device="cpu")
    windows = calibration_windows(loaded.tokenizer, args.calib, args.samples, args.seq_len, seed=0)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record: dict = {"task": args.child, "rss_after_load_mib": rss_loaded}

    def forward_pass(module) -> float:
        began = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, windows.shape[0], args.batch_size):
                module(input_ids=windows[start:start + args.batch_size], use_cache=False)
        return time.perf_counter() - began

    # The baseline forward passes run in the same process, just before the measured work, so both
    # see the same machine load.
    record["forward_seconds"] = forward_pass(loaded.model)
    record["decoder_forward_seconds"] = forward_pass(loaded.model.base_model)
    rss_forward = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record["rss_after_forward_mib"] = rss_forward
    began = time.perf_counter()
    if args.child != "dense":
        outcome = prune(loaded, windows, PruneRequest(method=args.child, cut=args.cut, batch_size=args.batch_size,
                                                      progress=False))
        record["removed"] = outcome.removed
        record["details"] = outcome.details
    record["seconds"] = time.perf_counter() - began
    record["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.child == "dense" or not args.skip_ppl:
        result = text_perplexity(loaded, args.ppl, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=False)
        record["ppl"] = result.perplexity
        record["ppl_tokens"] = result.predicted_tokens
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calib", default=f"{DATA}/wikitext2_valid_tokenized.txt")
    parser.add_argument("--ppl", default=f"{DATA}/wikitext2_raw_test.txt")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cut", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=65536)
    parser.add_argument("--tasks", default="dense,angular,replaceme-lstsq,replaceme-cosine")
    parser.add_argument("--skip-ppl", action="store_true", help="time and memory only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = {}
    for task in args.tasks.split(","):
        command = [sys.executable, __file__, "--child", task] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("child", "tasks", "skip_ppl")]
        command += ["--skip-ppl"] if args.skip_ppl else []
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows[task] = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(rows[task]), file=sys.stderr)
    print(f"| run | ppl (WikiText-2 test, {args.max_tokens} tok) | removed | prune s | full fwd s | x full fwd "
          "| x decoder fwd | peak RSS MiB | RSS after load+fwd MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task, row in rows.items():
        ppl = f"{row['ppl']:.2f}" if "ppl" in row else "-"
        print(f"| {task} | {ppl} | {row.get('removed', '-')} | {row['seconds']:.1f} | {row['forward_seconds']:.1f} | "
              f"{row['seconds'] / row['forward_seconds']:.2f} | {row['seconds'] / row['decoder_forward_seconds']:.2f} | "
              f"{row['peak_rss_mib']:.0f} | {row['rss_after_forward_mib']:.0f} |")


if __name__ == "__main__":
    main()
