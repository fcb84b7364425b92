"""The ``nnpes`` command. Each subcommand lives in its own module ``nnpes.cli.<name>`` with
``add_parser(subparsers)`` that registers it and sets ``func`` (args -> exit code)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order is the order in ``nnpes --help``. A module that is absent is skipped.
SUBCOMMANDS = ["info", "quickstart", "train", "evaluate", "export", "config", "md", "ipi_client", "active_learn"]


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
    for name, p in sub.choices.items():
        if name not in NO_COMPUTE:
            add_compute_options(p)
    return parser


# Commands that compute nothing with JAX get no --device / --compile-cache.
NO_COMPUTE = {"config"}
DEVICES = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}


def add_compute_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("compute")
    g.add_argument("--device", choices=sorted(DEVICES), default=None,
                   help="run JAX on this kind of device (default: JAX's choice, a GPU when one is there; "
                        "same as JAX_PLATFORMS=cpu / cuda)")
    g.add_argument("--compile-cache", default=None, metavar="DIR|off",
                   help="persistent compilation cache: compiled models are kept here and reused by later "
                        "runs (default: $NNPES_COMPILE_CACHE or ~/.cache/nnpes/jax; 'off' disables)")


def apply_compute_options(args) -> None:
    """Select the device and the compilation cache before anything compiles."""
    import jax

    from nnpes import compile_cache

    device = getattr(args, "device", None)
    if device is not None:
        jax.config.update("jax_platforms", DEVICES[device])
        try:
            found = jax.devices()
        except RuntimeError as e:
            raise ValueError(f"--device {device}: no such device here ({str(e).splitlines()[0]})") from None
        if not found:
            raise ValueError(f"--device {device}: no such device here")
    if "compile_cache" in args:
        compile_cache.enable(args.compile_cache)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at the time of each message."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _log_to_stderr() -> None:
    """Progress lines of the library (logger ``nnpes``, e.g. "compiling 2 padded shapes…") on stderr."""
    logger = logging.getLogger("nnpes")
    if not any(getattr(h, "nnpes_cli", False) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.nnpes_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    from nnpes.errors import TrainingInterrupted, UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    _log_to_stderr()
    try:
        apply_compute_options(args)
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as e:
        # Bad input (nnpes.errors): a clear one-line error. Anything else is a bug: its traceback.
        print(f"nnpes {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:  # a scheduler's SIGTERM or Ctrl-C: the usual exit status of that signal
        print(f"nnpes {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum


if __name__ == "__main__":
    sys.exit(main())
