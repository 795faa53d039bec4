"""ReplaceMe and Streamline-FFN on a post-MLP-norm family (Gemma 3), against the plain drop of the same span.

Loads the model once, calibrates on `--samples` x `--seq-len` windows, and for every span in
`--starts` (default: the best angular span, and the best one that keeps the last block) builds
each variant on a fresh copy of the model and measures WikiText-2 perplexity (BOS at the start of
every window). One JSON record per row goes to `--out` (JSON lines) as soon as it is measured.

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/gemma_postnorm.py --model /path/to/gemma3-270m(.gguf|dir)

Fit times are CPU seconds on a shared machine: "under load", not a speed claim.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch

from layercut.calibration.capture import calibrate, first_tensor, forward_blocks
from layercut.data import calibration_windows
from layercut.evaluation.perplexity import text_perplexity
from layercut.loading import LoadedModel, load_model
from layercut.methods.postnorm_fit import (direction_weights, effective_scale, fit_norm_scale, fit_through_norm,
                                   fold_through_norm, post_norm, rms_norm, scaled_targets, through_norm_loss)
from layercut.methods.base import PruneRequest
from layercut.prune import prune
from layercut.methods.replaceme import solve_lstsq
from layercut.calibration.scores import redundancy
from layercut.surgery import remove_blocks

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"
VARIANTS = ("drop", "ls", "cos", "streamline-ffn", "ls-w", "mse", "cos-id", "cos-T", "ls-w+scale", "scale")


def span_rows(loaded: LoadedModel, windows: torch.Tensor, fold_block: int, cut: int):
    """Token rows (M, h, L) for cutting blocks fold_block+1 .. fold_block+cut: the MLP output before
    the post-norm, the attention half's output h = X_{j+1} - N(M), and the span's output."""
    norm = post_norm(loaded, fold_block)
    parts = []
    for capture in forward_blocks(loaded, windows, 8, mlp_blocks={fold_block}, stop_after=fold_block + cut,
                                  progress=False):
        dim = capture.mlp[fold_block].shape[-1]
        mlp_out = capture.mlp[fold_block].reshape(-1, dim)
        attn_out = capture.hidden[fold_block + 1].reshape(-1, dim) - first_tensor(norm(mlp_out))
        parts.append((mlp_out, attn_out, capture.hidden[fold_block + 1 + cut].reshape(-1, dim)))
    return tuple(torch.cat([p[i] for p in parts]).double() for i in range(3))


def fit_variant(name: str, rows, scale: torch.Tensor, eps: float, args) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, g) of one variant from the rows of a span (the same math `layercut.methods.postnorm_fit` exposes)."""
    mlp_out, attn_out, span_out = rows
    dim = mlp_out.shape[1]
    eye = torch.eye(dim, dtype=torch.float64)
    residual = span_out - attn_out
    relative = 1.0 / span_out.pow(2).sum(1)
    if name == "scale":
        return eye, fit_norm_scale(rms_norm(mlp_out, torch.ones(dim, dtype=torch.float64), eps), residual, relative)
    zed = scaled_targets(mlp_out, residual, scale)
    if name == "ls":
        return solve_lstsq(mlp_out.T @ mlp_out, mlp_out.T @ zed, args.alpha), scale
    weighted = mlp_out * direction_weights(zed).unsqueeze(1)
    transform = solve_lstsq(weighted.T @ mlp_out, weighted.T @ zed, args.alpha)
    if name == "ls-w":
        return transform, scale
    if name == "ls-w+scale":
        normalized = rms_norm(mlp_out @ transform, torch.ones(dim, dtype=torch.float64), eps)
        return transform, fit_norm_scale(normalized, residual, relative)
    objective = "mse" if name == "mse" else "cosine"
    init = eye if name == "cos-id" else transform
    return fit_through_norm(rows, init, scale, eps=eps, objective=objective, train_scale=name != "cos-T",
                            lr=args.lr, epochs=args.epochs, batch_tokens=args.batch_tokens, progress=False)


def build(base: LoadedModel, start: int, cut: int, name: str, rows, calib: torch.Tensor, args) -> dict:
    """A pruned copy of `base` for one variant; returns the record (without perplexity) and the model."""
    loaded = copy.deepcopy(base)
    fold_block = start - 1
    record: dict = {"variant": name, "span": f"{start}..{start + cut - 1}", "start": start}
    began = time.process_time()
    if name == "streamline-ffn":
        request = PruneRequest(method="streamline-ffn", cut=cut, start=start, progress=False,
                               extra={"epochs": args.sf_epochs, "lr": args.sf_lr,
                                      "train_batch_tokens": args.batch_tokens, "patience": 3})
        outcome = prune(loaded, calib, request)
        history = outcome.details["streamline"]
        record.update(identity_heldout_mse=history["identity_heldout_mse"],
                      best_heldout_mse=history["best_heldout_mse"], epochs_run=len(history["epochs"]))
    elif name != "drop":
        eps = float(loaded.model.config.rms_norm_eps)
        scale = effective_scale(loaded, fold_block)
        held = rows[0].shape[0] // 10  # the last tenth of the token rows: held-out loss of the fit
        train_rows = tuple(part[:-held] for part in rows)
        held_rows = tuple(part[-held:] for part in rows)
        transform, new_scale = fit_variant(name, train_rows, scale, eps, args)
        for objective in ("cosine", "mse"):
            record[f"heldout_{objective}"] = float(through_norm_loss(transform, new_scale, held_rows, eps, objective))
        fold_through_norm(loaded, fold_block, transform, new_scale)
    if name != "streamline-ffn":
        remove_blocks(loaded, range(start, start + cut))
    record["fit_cpu_s_under_load"] = round(time.process_time() - began, 1)
    return record, loaded


def perplexity(loaded: LoadedModel, args) -> float:
    result = text_perplexity(loaded, args.eval, seq_len=args.eval_seq_len, max_tokens=args.eval_tokens,
                             batch_size=1, progress=False)
    assert result.bos, "Gemma needs BOS at the start of every window"
    return result.perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/work/scratch/gemma3-270m.gguf")
    parser.add_argument("--calib", default=str(DATA / "wikitext2_valid_tokenized.txt"))
    parser.add_argument("--eval", default=str(DATA / "wikitext2_raw_test.txt"))
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-seq-len", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--cut", type=int, default=4)
    parser.add_argument("--starts", default="", help="comma-separated span starts (default: see module doc)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-tokens", type=int, default=256)
    parser.add_argument("--sf-epochs", type=int, default=40)
    parser.add_argument("--sf-lr", type=float, default=2e-4)
    parser.add_argument("--dense", action="store_true", help="also measure the dense model")
    parser.add_argument("--out", default="bench/gemma_postnorm.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)
    base = load_model(args.model, device="cpu", dtype="float32")
    calib = calibration_windows(base.tokenizer, args.calib, args.samples, args.seq_len, seed=0)
    layers = base.num_layers
    scan = calibrate(base, calib, 8, progress=False).scan
    angular = redundancy(scan, "angular").abs()[:, args.cut]
    starts = [int(s) for s in args.starts.split(",")] if args.starts else sorted({
        min(range(1, layers - args.cut + 1), key=lambda k: float(angular[k])),
        min(range(1, layers - args.cut), key=lambda k: float(angular[k]))})
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "variants", "starts", "dense")}
    with open(args.out, "a") as sink:
        def emit(record: dict) -> None:
            record.update(settings=settings, angular={str(k): round(float(angular[k]), 4) for k in starts})
            sink.write(json.dumps(record) + "\n")
            sink.flush()
            print({k: v for k, v in record.items() if k not in ("settings", "angular")}, flush=True)

        if args.dense:
            emit({"variant": "dense", "span": "-", "ppl": perplexity(base, args)})
        for start in starts:
            rows = span_rows(base, calib, start - 1, args.cut)
            for name in args.variants.split(","):
                record, pruned = build(base, start, args.cut, name, rows, calib, args)
                record["ppl"] = perplexity(pruned, args)
                del pruned
                gc.collect()
                emit(record)


if __name__ == "__main__":
    main()
