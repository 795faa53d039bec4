"""The `layercut` command line. Each subcommand lives in `layercut/commands/<name>.py` and
exposes `register(subparsers)`; this file only wires them up and turns user errors into one line."""

from __future__ import annotations

import argparse
import importlib
import sys

from layercut import __version__
from layercut.distributed import init_from_env, shutdown
from layercut.errors import LayercutError

COMMAND_MODULES = (
    "layercut.commands.scan",
    "layercut.commands.prune",
    "layercut.commands.eval",
    "layercut.commands.heal",
    "layercut.commands.slim",
    "layercut.commands.export",
    "layercut.commands.run",
    "layercut.commands.bench",
    "layercut.commands.compare",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layercut", description="Make causal LMs shallower and slimmer: scan, prune, slim, heal, evaluate, export.")
    parser.add_argument("--version", action="version", version=f"layercut {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    parser.set_defaults(cli_parser=parser)  # `layercut run` parses each recipe step with it
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    started = init_from_env()
    try:
        code = int(args.run(args) or 0)
        if started:
            shutdown()
        return code
    except LayercutError as exc:
        print(f"layercut: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("layercut: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
