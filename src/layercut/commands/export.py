"""`layercut export`: write a model as a GGUF file (llama.cpp, Ollama) and/or re-save it as a
Hugging Face checkpoint whose model card records a recipe."""

from __future__ import annotations

import argparse
from pathlib import Path

from layercut.commands.flags import add_model_args
from layercut.errors import ConfigError


GGUF_TYPES = ("f16", "f32")  # gguf_export.GGUF_TYPES, named here so the parser needs no torch (a test checks)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write a GGUF file for llama.cpp / Ollama, or a checkpoint with a recipe",
                                   description=__doc__)
    add_model_args(parser)
    parser.add_argument("--gguf", help="write a GGUF file here (Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3)")
    parser.add_argument("--gguf-type", choices=GGUF_TYPES, default="f16",
                        help="precision of the GGUF matrices; norms stay f32 (default: %(default)s)")
    parser.add_argument("--out", help="also write a Hugging Face checkpoint here")
    parser.add_argument("--recipe", help="a recipe YAML file to embed in the --out model card")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from layercut.commands.common import check_output_room, load_from_args, peek_from_args
    from layercut.export import ensure_output_free, save_checkpoint
    from layercut.gguf_export import check_gguf_export, export_gguf

    if not args.gguf and not args.out:
        raise ConfigError("nothing to export; pass --gguf FILE and/or --out DIR")
    if args.recipe and not args.out:
        raise ConfigError("--recipe is embedded in the model card of --out; pass --out DIR too")
    for path in (args.gguf, args.out):
        if path:
            ensure_output_free(path, args.overwrite)
    recipe_text = Path(args.recipe).read_text(encoding="utf-8") if args.recipe else None
    config = peek_from_args(args)
    target = check_gguf_export(config) if args.gguf else None
    if args.out:
        check_output_room(args, config, args.out)
    if args.gguf:
        check_output_room(args, config, args.gguf, "--gguf", {"f16": "float16", "f32": "float32"}[args.gguf_type])
    loaded = load_from_args(args)
    if args.out:
        step = {"command": "export", "method": "recipe" if recipe_text else "checkpoint",
                "summary": f"exported {loaded.num_layers} layers", "params": {"gguf": args.gguf}}
        if recipe_text:
            step["recipe"] = recipe_text
        save_checkpoint(loaded, args.out, step, overwrite=args.overwrite)
        print(f"checkpoint written to {args.out}")
    if args.gguf:
        export_gguf(loaded, args.gguf, args.gguf_type, overwrite=args.overwrite, checked=target)
        print(f"GGUF ({args.gguf_type}) written to {args.gguf}")
    return 0
