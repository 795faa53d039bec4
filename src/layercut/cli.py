"""The `layercut` command line. Each subcommand lives in `layercut/commands/<name>.py` and
exposes `register(subparsers)`; this file only wires them up and turns user errors into one line.
Building the parser imports no torch (command modules import the heavy stages in their `run`), so
`--help` and argument errors answer at once; tests/test_cli.py checks it."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from layercut import __version__
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
    "layercut.commands.shrink",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the problem and where to look, instead
    of argparse's full usage block (subcommand parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        message = message.replace("invalid choice: ", "invalid choice ").replace(" (choose from ", "; choose from ")
        message = message.rstrip(")") if "; choose from " in message else message
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
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
    from layercut.distributed import init_from_env, shutdown  # torch: only once the arguments parse

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
