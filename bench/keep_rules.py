"""Benchmark: weight-only FFN keep rules on SmolLM2-135M at one ratio, by WikiText-2 perplexity.

Each rule scores every FFN neuron from the weights alone and keeps the top (1 - ratio) of each layer:
the gate row norm (the magnitude baseline of `layercut slim`), the down column norm, their product
with the up row norm, the largest single absolute down entry, and a seeded random score. "+protect" forces in
the neurons whose gate x up x down norm product exceeds `--protect` times their layer's median, whatever the
rule says, to test whether a few outlier neurons explain the damage. The dense model is measured in
the same run. Results go to a JSON file and a Markdown table on stdout.

    python bench/keep_rules.py --ratio 0.2 --max-tokens 2048 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from layercut.evaluation.perplexity import text_perplexity
from layercut.loading import LoadedModel, load_model
from layercut.methods.prunenet import ffn_weights, top_rows
from layercut.slicing import keep_count, slice_ffn

TEST_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "wikitext2_raw_test.txt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.2)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--protect", type=float, default=5.0, help="outlier factor over the layer median")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default="bench/keep_rules.json")
    return parser.parse_args()


def neuron_scores(loaded: LoadedModel, seed: int = 0) -> dict[str, torch.Tensor]:
    """[layers, d_ff] scores of every weight-only rule."""
    ffn = ffn_weights(loaded)
    gate_norm, up_norm, down_norm = ffn.gate.norm(dim=-1), ffn.up.norm(dim=-1), ffn.down.norm(dim=-1)
    return {"gate row norm (magnitude)": gate_norm, "down column norm": down_norm,
            "gate x up x down norms": gate_norm * up_norm * down_norm,
            "largest abs down entry": ffn.down.abs().amax(dim=-1),
            "random": torch.rand(gate_norm.shape, generator=torch.Generator().manual_seed(seed))}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dense = load_model("smollm2-135m", device="cpu")

    def perplexity(loaded: LoadedModel) -> float:
        return text_perplexity(loaded, str(TEST_TEXT), seq_len=args.seq_len, max_tokens=args.max_tokens,
                               progress=False).perplexity

    scores = neuron_scores(dense)
    product = scores["gate x up x down norms"]
    outliers = product > args.protect * product.median(dim=1, keepdim=True).values
    keep = keep_count(product.shape[1], args.ratio)
    rows = [{"rule": "dense", "ppl": perplexity(dense)}]
    for name, score in scores.items():
        for protect in (False, True):
            if protect and name not in ("gate row norm (magnitude)", "random"):
                continue
            chosen = top_rows(score + outliers.float() * score.abs().max() * 2 if protect else score, keep)
            kept_outliers = sum(int(outliers[i, index].sum()) for i, index in enumerate(chosen))
            model = copy.deepcopy(dense)
            slice_ffn(model, chosen)
            rows.append({"rule": name + (" +protect" if protect else ""), "ppl": perplexity(model),
                         "outliers_kept": f"{kept_outliers}/{int(outliers.sum())}"})
            del model
            print(json.dumps(rows[-1]), flush=True)
    top = [(layer, int(index)) for layer, index in outliers.nonzero().tolist()]
    result = {"settings": vars(args), "outliers": top, "rows": rows}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\noutlier neurons (layer, index): {top}\n\n| keep rule | WikiText-2 ppl | vs dense | outliers kept |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['rule']} | {row['ppl']:,.2f} | {row['ppl'] / rows[0]['ppl']:,.1f}x | {row.get('outliers_kept', '-')} |")


if __name__ == "__main__":
    main()
