"""``nnpes active-learn CONFIG.yaml [--run-dir DIR] [--resume]``: the committee active-learning loop."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "active-learn", help="active learning: train a committee, explore, select, label, repeat",
        description="Iterations of train → explore → select → label with a committee of potentials. "
        "Crash-safe: rerun with --resume after an interruption.",
    )
    p.add_argument("config", help="YAML config (sections: model, data, committee, explore, select, oracle, executor, stop)")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from the stage it was in")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import sys

    from nnpes.active.loop import run
    from nnpes.oracle.store import OracleWorkersDied

    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    try:
        state = run(args.config, run_dir, resume=args.resume)
    except OracleWorkersDied as e:  # infrastructure: every finished label is kept, --resume goes on
        print(f"nnpes active-learn: error: {e}", file=sys.stderr)
        return 1
    last = state["history"][-1] if state["history"] else {}
    print(f"active learning finished after {len(state['history'])} iteration(s): {state.get('stop_reason')}; "
          f"{last.get('labels', 0)} labels, {last.get('oracle_calls', 0)} oracle calls; run in {run_dir}")
    return 0
