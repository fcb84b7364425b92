"""The ``nnpes`` command. Each subcommand lives in its own module ``nnpes.cli.<name>`` with
``add_parser(subparsers)`` that registers it and sets ``func`` (args -> exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order in ``nnpes --help``. A module that is absent is skipped.
SUBCOMMANDS = ["info", "quickstart", "train", "evaluate", "export", "config", "md", "active_learn"]


def build_parser() -> argparse.ArgumentParser:
    from nnpes import __version__

    parser = argparse.ArgumentParser(prog="nnpes", description="Neural-network potential energy surfaces in JAX.")
    parser.add_argument("--version", action="version", version=f"nnpes {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"nnpes.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"nnpes.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        # Bad input: a clear one-line error, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"nnpes {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
