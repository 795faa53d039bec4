"""Flags shared by several subcommands, and their parse-time checks. Light (argparse and the errors
only), so the command-line parser is built without importing torch."""

from __future__ import annotations

import argparse

from layercut.errors import ConfigError
from layercut.evaluation import DEFAULT_LOGITS_MIB

DEFAULT_MODEL = "smollm2-135m"


def int_at_least(minimum: int, why: str = ""):
    """An argparse type: an integer >= `minimum`, refused at parse time (before any model loads);
    `why` explains the minimum in the message."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum} (got {value}){f': {why}' if why else ''}")
        return value
    parse.__name__ = f"int>={minimum}"
    return parse


positive_int = int_at_least(1)
block_count = int_at_least(1, "a cut of 0 blocks leaves nothing to do")


def add_cut_args(parser: argparse.ArgumentParser) -> None:
    """The flags every depth-pruning command shares: how many blocks, and which blocks stay protected."""
    parser.add_argument("--cut", type=block_count, required=True, help="number of blocks to remove in total")
    parser.add_argument("--min-start", type=int_at_least(0),
                        help="earliest block a cut may touch (default 1: the first block is kept; 0 allows it)")
    parser.add_argument("--allow-last", action="store_true",
                        help="let span methods, shortgpt and laco cut the final block (kept by default: "
                             "cutting next to the output hurts most)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="alias (smollm2-135m, gemma3-270m), HF directory, .gguf file or hub id "
                             "(default: %(default)s)")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the checkpoint to run (off by default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device-map", default=None,
                        help="let accelerate place the model over several devices (e.g. auto); overrides --device")


DEFAULT_CALIB = "builtin:pydoc-calib"


def calib_sources(args: argparse.Namespace) -> list[str]:
    """The --calib sources given (repeatable), or the installed default text."""
    return list(args.calib) if args.calib else [DEFAULT_CALIB]


def add_calib_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--calib", action="append", required=required,
                        help="calibration text: .txt, .jsonl, builtin:pydoc-calib, or hf:NAME[:CONFIG][:SPLIT]; "
                             f"repeat for a mix sharing --samples evenly (default: {DEFAULT_CALIB})")
    parser.add_argument("--text-field", default="text", help="JSONL / dataset field holding the text")
    parser.add_argument("--samples", type=positive_int, default=64, help="number of calibration windows")
    parser.add_argument("--seq-len", type=int_at_least(2), default=256, help="tokens per calibration window")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass")


def add_eval_args(parser: argparse.ArgumentParser, window_flag: str = "--seq-len", batch_flag: str = "--batch-size",
                  text_field_flag: str = "--text-field") -> None:
    """The evaluation flags of `layercut eval`. `compare` also calibrates, so it names the three flags
    its calibration already uses differently; the values land in the same attributes either way."""
    group = parser.add_argument_group("evaluation")
    group.add_argument("--ppl",
                       help="text for perplexity: .txt, .jsonl, builtin:pydoc-eval or hf:NAME[:CONFIG][:SPLIT]")
    group.add_argument(text_field_flag, dest="ppl_text_field", default="text", metavar="FIELD",
                       help="JSONL / dataset field holding the --ppl text")
    group.add_argument("--max-tokens", type=positive_int, help="cap the perplexity text at this many tokens (whole windows)")
    group.add_argument(window_flag, dest="ppl_seq_len", type=int_at_least(2), metavar="TOKENS",
                       help="perplexity window length (default: model length, at most 2048)")
    group.add_argument("--ppl-batch-size", type=positive_int, default=1, help="perplexity windows per forward pass")
    group.add_argument("--logits-mib", type=positive_int, default=DEFAULT_LOGITS_MIB, metavar="MIB",
                       help="memory for the vocabulary projection: logits are computed and reduced this many "
                            "MiB (float32) at a time, whatever the batch and window (default: %(default)s)")
    group.add_argument("--tasks", help="comma-separated task names, .jsonl paths or hf: datasets")
    group.add_argument("--tasks-dir", help="folder holding the task files of registered task names")
    group.add_argument("--limit", type=positive_int, help="evaluate only the first N items of each task")
    group.add_argument("--num-fewshot", type=int_at_least(0), default=0, help="solved examples before each question")
    group.add_argument(batch_flag, dest="task_batch_size", type=positive_int, default=16, metavar="N",
                       help="packed questions per forward pass")


def check_eval_args(args: argparse.Namespace, batch_flag: str = "--batch-size") -> None:
    """Refuse an evaluation with nothing to measure or with empty batches."""
    if not args.ppl and not args.tasks:
        raise ConfigError("nothing to evaluate; pass --ppl TEXT and/or --tasks piqa,arc_easy,... (with --tasks-dir)")
    for value, flag in ((args.task_batch_size, batch_flag), (args.ppl_batch_size, "--ppl-batch-size")):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1")


def add_output_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--out", required=required, help="output directory (a Hugging Face checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
