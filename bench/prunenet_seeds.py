"""PruneNet over seeds and ratios in one process: learn, slim, measure WikiText-2 perplexity.

The model is loaded and the text tokenised once; each run slices a copy of the dense model and is
scored with layercut's own `window_nll`. One policy is learned per seed at --learn-ratio and reused
at every --ratios value (no relearning), as `layercut slim --policy` does. Baselines need no
learning: `magnitude` (largest gate-row norm) and `maxdown` (the largest |down_proj| entry, the best
weight-only rule of bench/keep_rules.py), both deterministic and run once, and `random` (a seeded
uniform keep). `--set key=value`
overrides a PolicyConfig field (features as name+name, e.g. --set features=gate_norm+gate_max).

    python bench/prunenet_seeds.py --runs layercut,reference,magnitude,random,maxdown --seeds 0,1,2,3,4 \
        --ratios 0.1,0.2,0.3 --json bench/prunenet_seeds.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from layercut.data import bos_id, split_windows, tokenize_text
from layercut.evaluation.perplexity import window_nll
from layercut.loading import LoadedModel, load_model
from layercut.methods.prunenet import (FEATURES, FfnWeights, PolicyConfig, ffn_weights, learn_policy, magnitude_keep,
                               policy_keep, top_rows)
from layercut.slicing import keep_count, slice_ffn

TEST_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2_raw_test.txt"
BASELINES = ("magnitude", "random", "maxdown")
SEEDLESS = ("magnitude", "maxdown")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--runs", default="layercut", help="comma-separated: layercut, reference, " + ", ".join(BASELINES))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--learn-ratio", type=float, default=0.2)
    parser.add_argument("--ratios", default="0.2")
    parser.add_argument("--set", action="append", default=[], help="PolicyConfig override key=value (repeatable)")
    parser.add_argument("--label", default="", help="name of this configuration in the output")
    parser.add_argument("--chars", type=int, default=16000, help="characters of --text read")
    parser.add_argument("--text", default=str(TEST_TEXT))
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="bench/prunenet_seeds.json")
    parser.add_argument("--table", action="store_true", help="only print the Markdown table of --json")
    return parser.parse_args()


def print_table(results: dict[str, Any]) -> None:
    """Median and worst perplexity per configuration and ratio, with seeds and learning CPU time."""
    labels = list(dict.fromkeys(row["label"] for row in results["rows"]))
    ratios = sorted({ratio for row in results["rows"] for ratio in row["ppl"]})
    print("| run | seeds | " + " | ".join(f"ppl {r}: median / worst" for r in ratios) + " | learning CPU s (under load) |")
    print("|---" * (len(ratios) + 3) + "|")
    for label in labels:
        rows = [row for row in results["rows"] if row["label"] == label]
        cells = []
        for ratio in ratios:
            values = [row["ppl"][ratio] for row in rows if ratio in row["ppl"]]
            cells.append(f"{statistics.median(values):,.1f} / {max(values):,.1f}" if values else "-")
        cpu = [row["cpu_seconds"] for row in rows if "cpu_seconds" in row]
        seconds = f"{statistics.median(cpu):.0f} (max {max(cpu):.0f})" if cpu else "-"
        print(f"| {label} | {len(rows)} | " + " | ".join(cells) + f" | {seconds} |")


def overrides(pairs: list[str]) -> dict[str, Any]:
    """PolicyConfig fields from key=value strings, typed after the dataclass defaults."""
    fields = {f.name: f for f in dataclasses.fields(PolicyConfig)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        if key == "features":
            values[key] = tuple(raw.split("+")) if raw else FEATURES
        elif key in ("variant", "reward"):
            values[key] = raw
        elif key in ("episodes", "samples", "restarts", "seed"):
            values[key] = int(raw)
        elif key in fields:
            values[key] = float(raw)
        else:
            raise SystemExit(f"unknown PolicyConfig field '{key}'")
    return values


def baseline_keep(name: str, ffn: FfnWeights, ratio: float, seed: int) -> list[torch.Tensor]:
    k = keep_count(ffn.shape[1], ratio)
    if name == "magnitude":
        return magnitude_keep(ffn.gate, ratio)
    if name == "maxdown":
        return top_rows(ffn.down.abs().amax(dim=-1), k)
    return top_rows(torch.rand(ffn.shape[:2], generator=torch.Generator().manual_seed(seed)), k)


def main() -> None:
    args = parse_args()
    if args.table:
        print_table(json.loads(Path(args.json).read_text()))
        return
    torch.set_num_threads(args.threads)
    dense = load_model(args.model, device="cpu")
    text = Path(args.text).read_text(encoding="utf-8")[: args.chars]
    windows = split_windows(tokenize_text(dense.tokenizer, text), args.seq_len, bos_id(dense.tokenizer))
    ffn = ffn_weights(dense)
    ratios = [float(r) for r in args.ratios.split(",")]

    def perplexity(loaded: LoadedModel, keep: list[torch.Tensor] | None) -> float:
        model = loaded
        if keep is not None:
            model = copy.deepcopy(dense)
            slice_ffn(model, keep)
        nll, count = window_nll(model.model, windows, progress=False)
        return math.exp(nll / count)

    out = Path(args.json)
    results: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {"rows": []}
    results.setdefault("dense", {})[args.model] = round(perplexity(dense, None), 3)
    extra = overrides(args.set)
    for run_name in args.runs.split(","):
        seeds = [0] if run_name in SEEDLESS else [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            row: dict[str, Any] = {"model": args.model, "run": run_name, "label": args.label or run_name,
                                   "seed": seed, "settings": args.set, "ppl": {}}
            if run_name in BASELINES:
                keeps = {r: baseline_keep(run_name, ffn, r, seed) for r in ratios}
            else:
                config = PolicyConfig(ratio=args.learn_ratio, **{"variant": run_name, "seed": seed, **extra})
                start = time.process_time()
                learned = learn_policy(ffn, config, progress=False)
                row.update(cpu_seconds=round(time.process_time() - start, 1), final_reward=learned.final_reward,
                           episodes=config.resolved("episodes"))
                keeps = {r: policy_keep(learned.policy, ffn, r, seed) for r in ratios}
            for ratio, keep in keeps.items():
                row["ppl"][str(ratio)] = round(perplexity(dense, keep), 2)
            results["rows"].append(row)
            out.write_text(json.dumps(results, indent=1) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)
    for ratio in ratios:
        values = [r["ppl"][str(ratio)] for r in results["rows"] if r["label"] == (args.label or args.runs)
                  and str(ratio) in r["ppl"]]
        if values:
            print(f"{args.label or args.runs} @ {ratio}: median {statistics.median(values):.1f}, worst {max(values):.1f}")


if __name__ == "__main__":
    main()
