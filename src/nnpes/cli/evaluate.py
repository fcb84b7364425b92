"""``nnpes evaluate RUN_OR_MODEL DATA [--out metrics.json] [--plot parity.png]``; a committee (the
directory ``Ensemble.save`` writes, or a ``--committee`` run) also reports its uncertainty."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="errors of a trained model on labelled data",
                              description="Energy/force/stress errors (meV) of a model on a labelled file; for a "
                                          "committee, the errors of its mean and its calibrated uncertainty.")
    p.add_argument("model", help="a run directory (uses RUN/model, or RUN/committee of a --committee run), a saved "
                                 "model directory or a saved committee directory")
    p.add_argument("data", help="labelled structures (any format nnpes.data.read_structures reads)")
    p.add_argument("--energy-unit", default="eV", help="unit of energies in DATA (e.g. kcal/mol for rMD17)")
    p.add_argument("--index", default=":", help="frames to use, ase syntax (default ':')")
    p.add_argument("--out", default=None, help="write the metrics as JSON here")
    p.add_argument("--plot", default=None, help="write a parity plot (PNG) here")
    p.set_defaults(func=run)


def model_dir(path: str) -> Path:
    """A saved model directory, given it or a run directory that holds ``model/``."""
    p = Path(path)
    if (p / "model" / "params.msgpack").exists():
        return p / "model"
    return p


def committee_dir(path: str) -> Path | None:
    """The saved committee at ``path`` or in the run directory ``path/committee``, else None."""
    from nnpes.active.ensemble import META_FILE

    for p in (Path(path), Path(path) / "committee"):
        if (p / META_FILE).is_file():
            return p
    return None


def run(args) -> int:
    from nnpes.active.ensemble import load_ensemble
    from nnpes.data import read_structures
    from nnpes.potential import load_potential
    from nnpes.training.evaluate import evaluate, format_metrics

    committee = committee_dir(args.model)
    pot = load_ensemble(committee) if committee is not None else load_potential(model_dir(args.model))
    atoms = read_structures(args.data, index=args.index, energy_unit=args.energy_unit)
    m = evaluate(pot, atoms, out=args.out, plot=args.plot, title=Path(args.data).name)
    print(format_metrics(m))
    if args.out:
        print(f"metrics written to {args.out}")
    if args.plot:
        print(f"parity plot written to {args.plot}")
    if not args.out and not args.plot:
        print(json.dumps(m))
    return 0
