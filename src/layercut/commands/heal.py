"""`layercut heal`: continue pretraining a (pruned) model on text, in full or with LoRA, optionally
distilling from a teacher; checkpoints, resume, held-out perplexity, a log and a loss curve."""

from __future__ import annotations

import argparse
import json
import sys

from layercut.commands.flags import add_model_args, add_output_args

DESCRIPTION = "Heal a pruned model (LayerChop): continued next-token pretraining, full or LoRA, optional distillation."


def block_or_auto(value: str) -> int | str:
    """`--train-from`: a block number >= 0, or auto."""
    if value == "auto":
        return value
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a block number >= 0 or auto, got '{value}'")
    return int(value)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("heal", help=DESCRIPTION, description=DESCRIPTION)
    add_model_args(parser)
    parser.set_defaults(dtype="float32")
    data = parser.add_argument_group("data")
    data.add_argument("--data", required=True, action="append",
                      help="training text: .txt, .jsonl, builtin:pydoc-calib or hf:NAME[:CONFIG][:SPLIT]; repeat the "
                           "flag to train on a mix of several texts (a text given twice counts twice)")
    data.add_argument("--text-field", default="text", help="JSONL / dataset field holding the text")
    data.add_argument("--seq-len", type=int, default=256, help="tokens per packed window (default: %(default)s)")
    data.add_argument("--ppl", default=None, help="held-out text for perplexity before, during and after training")
    data.add_argument("--ppl-max-tokens", type=int, default=16384, help="tokens of --ppl text used (default: %(default)s)")
    train = parser.add_argument_group("training")
    train.add_argument("--mode", choices=("full", "lora"), default="lora",
                       help="LoRA matrices on every block, merged at export (default: faster and better per CPU-minute "
                            "here), or full: every weight")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps")
    train.add_argument("--tokens", type=int, default=None, help="token budget; with --steps, whichever ends first")
    train.add_argument("--max-minutes", type=float, default=None,
                       help="stop training after this many minutes; the schedule is re-planned from the speed of "
                            "the first steps so it still decays in time")
    train.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-4 full, 1e-3 lora)")
    train.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of --lr")
    train.add_argument("--warmup", type=int, default=10, help="linear warmup steps (default: %(default)s)")
    train.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    train.add_argument("--batch-size", type=int, default=4, help="windows per micro-batch (default: %(default)s)")
    train.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm; 0 disables")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="autocast: auto = bf16 on CUDA (fp16 where unsupported), fp32 on CPU")
    train.add_argument("--train-from", type=block_or_auto, default=None,
                       help="train only block N and above (the embeddings, LM head and lower blocks stay frozen); "
                            "auto = the first block that differs from --teacher's, i.e. where the cut begins "
                            "(default: every block)")
    train.add_argument("--lora-rank", type=int, default=16)
    train.add_argument("--lora-alpha", type=float, default=32.0)
    train.add_argument("--lora-dropout", type=float, default=0.0)
    kd = parser.add_argument_group("distillation")
    kd.add_argument("--teacher", default=None, help="teacher model for KL distillation (e.g. the unpruned model)")
    kd.add_argument("--kd-weight", type=float, default=0.5, help="loss = (1-w) * CE + w * KL (default: %(default)s)")
    kd.add_argument("--kd-temperature", type=float, default=1.0, help="softmax temperature of the KL")
    kd.add_argument("--hidden-kd-weight", type=float, default=0.0,
                    help="add w * the relative error between the hidden state after the first block behind each cut "
                         "and the teacher's after the same original block (needs --teacher and a layercut-pruned "
                         "model; default: off)")
    kd.add_argument("--hidden-kd-match", choices=["first", "all"], default="first",
                    help="which blocks --hidden-kd-weight matches: first = the first block behind each cut, all = every "
                         "block from the first cut to the last, each against its original block (default: %(default)s)")
    kd.add_argument("--teacher-device", default=None, help="device of the teacher (default: the student's), e.g. cpu to offload")
    run_group = parser.add_argument_group("checkpoints")
    run_group.add_argument("--eval-every", type=int, default=0, help="held-out perplexity every N steps (needs --ppl)")
    run_group.add_argument("--save-every", type=int, default=0, help="training checkpoint every N steps in OUT/checkpoint-N")
    run_group.add_argument("--resume", default=None, help="continue from OUT/checkpoint-NNNNNN")
    run_group.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_output_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from layercut.commands.common import check_output_room, load_from_args, peek_from_args
    from layercut.export import ensure_output_free
    from layercut.healing.trainer import build_config, export_healed, heal

    if not args.resume:
        ensure_output_free(args.out, args.overwrite)
    config = build_config(
        data=args.data[0] if len(args.data) == 1 else args.data, text_field=args.text_field, mode=args.mode,
        steps=args.steps, tokens=args.tokens, lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup=args.warmup,
        weight_decay=args.weight_decay, batch_size=args.batch_size, grad_accum=args.grad_accum, seq_len=args.seq_len,
        max_grad_norm=args.max_grad_norm, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, train_from=args.train_from, teacher=args.teacher, kd_weight=args.kd_weight,
        kd_temperature=args.kd_temperature, hidden_kd_weight=args.hidden_kd_weight,
        hidden_kd_match=args.hidden_kd_match,
        teacher_device=args.teacher_device, ppl=args.ppl, ppl_max_tokens=args.ppl_max_tokens,
        eval_every=args.eval_every, save_every=args.save_every, work_dir=args.out, resume=args.resume,
        seed=args.seed, max_seconds=args.max_minutes * 60 if args.max_minutes else None, precision=args.precision,
        progress=not args.no_progress)
    check_output_room(args, peek_from_args(args), args.out)
    loaded = load_from_args(args)
    result = heal(loaded, config)
    if result.interrupted:
        where = f"; resume with --resume {result.checkpoint}" if result.checkpoint else ""
        print(f"layercut: interrupted after step {result.steps}{where}", file=sys.stderr)
        return 130
    out = export_healed(loaded, config, result, args.out, overwrite=True)
    print(json.dumps({"out": str(out), **result.to_dict()}, indent=2))
    return 0
