"""Where does a pruned model build massive activations that the dense model does not?

Transformers give the first token a hidden state thousands of times larger than the rest (an attention
sink). A cut that removes the blocks building it must rebuild it, and a trained replacement sometimes
fires on another token too. This script runs the dense model and each given model over the same random
training windows and prints, per layer, how many tokens after the first have a hidden-state norm above
--threshold, and in how many windows; then the mean, median and largest per-token relative error against
the dense hidden state at a chosen pair of layers (the pair healing's hidden-state term compares). The
windows come from the ship recipe's healing mix (WikiText-2 validation, Python's reference text 3x).

    python bench/massive_tokens.py out/ship/01-prune out/ship/final --pair 12,20
"""

from __future__ import annotations

import argparse

import torch
from heal_budget import SHARED

from layercut.healing.hidden import per_token_relative_error
from layercut.healing.trainer import build_config, training_windows
from layercut.loading import load_model

DATA = [str(SHARED / "text" / "wikitext2_valid_tokenized.txt")] + ["builtin:pydoc-calib"] * 3


def hidden_states(model: torch.nn.Module, windows: torch.Tensor, batch: int = 8) -> list[torch.Tensor]:
    """All hidden states (index 0 = embeddings) of every window, as one [N, T, D] tensor per index."""
    parts = []
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch):
            parts.append(model(input_ids=windows[start:start + batch], output_hidden_states=True).hidden_states)
    return [torch.cat([part[index] for part in parts]) for index in range(len(parts[0]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="pruned models to inspect")
    parser.add_argument("--dense", default="smollm2-135m")
    parser.add_argument("--windows", type=int, default=64, help="random training windows of 256 tokens")
    parser.add_argument("--threshold", type=float, default=2000.0, help="norm counted as massive")
    parser.add_argument("--pair", default="12,20", help="student,dense hidden-state indices compared per token")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    dense = load_model(args.dense)
    windows = training_windows(dense.tokenizer, build_config(data=DATA, seq_len=256, batch_size=4, tokens=1))
    pick = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(args.seed))[:args.windows]
    windows = windows[pick]
    dense_states = hidden_states(dense.model, windows)
    print("dense: first-token norm by hidden-state index:",
          [round(float(h[:, 0].norm(dim=-1).mean())) for h in dense_states])
    print("dense: largest later-token norm by index:    ",
          [round(float(h[:, 1:].norm(dim=-1).max())) for h in dense_states])
    student_index, dense_index = (int(part) for part in args.pair.split(","))
    for path in args.models:
        states = hidden_states(load_model(path).model, windows)
        print(f"\n{path}")
        for index, state in enumerate(states):
            big = (state[:, 1:].norm(dim=-1) > args.threshold).nonzero()
            if len(big):
                positions = sorted({int(p) + 1 for p in big[:, 1]})
                print(f"  hidden state {index}: {len(big)} later tokens above {args.threshold:g} in "
                      f"{len({int(w) for w in big[:, 0]})} of {args.windows} windows, positions {positions[:10]}")
        student, target = states[student_index], dense_states[dense_index]
        ratio = per_token_relative_error(student, target)
        print(f"  relative error, hidden state {student_index} vs dense {dense_index}: mean {float(ratio.mean()):.3f}, "
              f"median {float(ratio.median()):.3f}, max {float(ratio.max()):.1f}")


if __name__ == "__main__":
    main()
