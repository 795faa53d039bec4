"""Benchmark of finer cuts on SmolLM2-135M: 8 blocks vs 8 attention vs 8 MLP sublayers.

Every variant is cut from the same dense model with the same calibration windows (angular
distance; sublayers by the angular distance of each half's input and output), scored by
WikiText-2 test perplexity on the same windows, and timed with `layercut.speed` (prefill and
greedy KV-cache decode) against the dense model in the same process, with the ideal speed-up
(layers / FLOPs kept) beside the measured one. Results go to a JSON file and a Markdown table.

    python bench/sublayers.py --cut 8 --calib-samples 8 --eval-max-tokens 2048
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from layercut.data import calibration_windows
from layercut.errors import ConfigError
from layercut.evaluation.perplexity import text_perplexity
from layercut.loading import LoadedModel, load_model
from layercut.prune import PruneRequest, prune
from layercut.speed import bench_models, render_bench_markdown

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"
CALIB_TEXT = SHARED_TEXT / "wikitext2_valid_tokenized.txt"
TEST_TEXT = SHARED_TEXT / "wikitext2_raw_test.txt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cut", type=int, default=8)
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--eval-seq-len", type=int, default=256)
    parser.add_argument("--eval-max-tokens", type=int, default=2048)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--gen-len", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="bench/sublayers.json")
    return parser.parse_args()


def variants(args: argparse.Namespace) -> dict[str, PruneRequest]:
    common = dict(cut=args.cut, batch_size=8, progress=False)
    return {f"{args.cut} blocks (angular)": PruneRequest(method="angular", **common),
            f"{args.cut} attention sublayers": PruneRequest(method="angular", granularity="attn", **common),
            f"{args.cut} MLP sublayers": PruneRequest(method="angular", granularity="mlp", **common)}


def cut_variant(dense: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> tuple[LoadedModel | None, dict]:
    model = copy.deepcopy(dense)
    began = time.perf_counter()
    try:
        outcome = prune(model, windows, request)
    except ConfigError as error:
        return None, {"error": str(error)}
    record = {"seconds": round(time.perf_counter() - began, 1), "removed_blocks": outcome.removed,
              "removed_sublayers": outcome.details.get("removed_sublayers")}
    return model, record


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    dense = load_model("smollm2-135m", device="cpu")
    windows = calibration_windows(dense.tokenizer, str(CALIB_TEXT), args.calib_samples, args.calib_seq_len, 0)
    ppl = lambda loaded: text_perplexity(loaded, str(TEST_TEXT), seq_len=args.eval_seq_len,  # noqa: E731
                                         max_tokens=args.eval_max_tokens, progress=False).perplexity
    rows: list[dict[str, Any]] = [{"name": "dense", "layers": dense.num_layers, "ppl": ppl(dense)}]
    models = {"dense": dense}
    for name, request in variants(args).items():
        model, record = cut_variant(dense, windows, request)
        if model is not None:
            record.update(layers=model.num_layers, ppl=ppl(model))
            models[name] = model
        rows.append({"name": name, **record})
        print(json.dumps(rows[-1])[:400], flush=True)
    speed = bench_models(models, args.batch, args.prompt_len, args.gen_len, args.repeats, baseline="dense")
    result = {"machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                          "torch": torch.__version__},
              "settings": vars(args), "rows": rows, "speed": speed}
    Path(args.json).write_text(json.dumps(result, indent=1))
    print("| variant | layers | removed | WikiText-2 ppl | vs dense |\n|---|---|---|---|---|")
    for row in rows:
        removed = row.get("removed_sublayers") or row.get("removed_blocks") or row.get("error", "")
        ratio = f"{row['ppl'] / rows[0]['ppl']:.2f}x" if "ppl" in row else "-"
        ppl = f"{row['ppl']:.2f}" if "ppl" in row else "-"
        print(f"| {row['name']} | {row.get('layers', '-')} | {removed} | {ppl} | {ratio} |")
    print(render_bench_markdown(speed))


if __name__ == "__main__":
    main()
