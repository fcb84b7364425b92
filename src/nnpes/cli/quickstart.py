"""``nnpes quickstart [--run-dir DIR] [--frames N] [--set section.key=value ...]``."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="make ethanol data with GFN2-xTB, train a small NequIP, evaluate it",
        description="End to end in under 10 minutes on 2 cores: GFN2-xTB Langevin MD of ethanol at 500 K "
                    "(tblite), training with the shipped quickstart config, test errors and parity plots.")
    p.add_argument("--run-dir", default=None, help="where data, checkpoints, model and plots go (default runs/quickstart)")
    p.add_argument("--config", default=None, help="config to use instead of the shipped nnpes/workflows/quickstart.yaml")
    p.add_argument("--frames", type=int, default=300, help="MD frames to label (default 300)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnpes.workflows import quickstart

    quickstart.run(args.run_dir, config=args.config, n_frames=args.frames, overrides=args.overrides)
    return 0
