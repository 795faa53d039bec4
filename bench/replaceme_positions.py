"""Where a cut sits matters more than how it is replaced: SmolLM2-135M, cut 8 blocks at fixed
starts, angular drop vs ReplaceMe LS, plus the per-state massive-activation ratio the scan sees.

    .venv/bin/python bench/replaceme_positions.py [--starts 1,5,11,12,15 --samples 32 --seq-len 128]
"""

from __future__ import annotations

import argparse
import copy

from layercut.calibration.capture import calibrate
from layercut.data import calibration_windows
from layercut.evaluation.perplexity import text_perplexity
from layercut.loading import load_model
from layercut.prune import PruneRequest, prune

DATA = "../shared/data/text"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calib", default=f"{DATA}/wikitext2_valid_tokenized.txt")
    parser.add_argument("--ppl", default=f"{DATA}/wikitext2_raw_test.txt")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--cut", type=int, default=8)
    parser.add_argument("--starts", default="1,5,11,12,15")
    args = parser.parse_args()
    dense = load_model("smollm2-135m", device="cpu")
    windows = calibration_windows(dense.tokenizer, args.calib, args.samples, args.seq_len, seed=0)
    scan = calibrate(dense, windows, 8, progress=False).scan
    print("massive ratio per X_k:", [round(float(r), 1) for r in scan.massive_ratio()])
    print("massive-activation creators:", scan.massive_creators())
    base = text_perplexity(dense, args.ppl, seq_len=256, max_tokens=args.max_tokens, progress=False).perplexity
    print("| start (blocks) | angular drop ppl | ReplaceMe LS ppl | LS / drop |\n|---|---|---|---|")
    print(f"| dense | {base:.1f} | {base:.1f} | 1.00 |")
    for start in [int(s) for s in args.starts.split(",")]:
        ppl = {}
        for method in ("angular", "replaceme-lstsq"):
            loaded = copy.deepcopy(dense)
            prune(loaded, windows, PruneRequest(method=method, cut=args.cut, start=start, progress=False))
            ppl[method] = text_perplexity(loaded, args.ppl, seq_len=256, max_tokens=args.max_tokens,
                                          progress=False).perplexity
        print(f"| {start} ({start}..{start + args.cut - 1}) | {ppl['angular']:.1f} | {ppl['replaceme-lstsq']:.1f} | "
              f"{ppl['replaceme-lstsq'] / ppl['angular']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
