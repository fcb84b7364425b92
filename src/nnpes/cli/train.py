"""``nnpes train CONFIG.yaml [--set section.key=value ...] [--run-dir DIR] [--resume] [--init-from MODEL]
[--committee K [--committee-mode seeds|bootstrap]]``."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a potential from a YAML config",
                              description="Train a potential from a YAML config (see `nnpes config template`).")
    p.add_argument("config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (YAML syntax), repeatable, e.g. --set training.lr=1e-3")
    p.add_argument("--run-dir", default=None, help="run directory (default: output.run_dir of the config)")
    p.add_argument("--resume", action="store_true", help="continue the run in the run directory exactly")
    p.add_argument("--init-from", default=None, metavar="MODEL_OR_RUN",
                   help="fine-tune: start from a saved potential (or a run directory's model/), keeping "
                        "its normalisation; same as model.init_from")
    p.add_argument("--committee", type=int, default=None, metavar="K",
                   help="train a committee of K members into RUN/members/k and save it, with its uncertainty "
                        "calibrated on the validation set, in RUN/committee; same as training.committee")
    p.add_argument("--committee-mode", choices=["seeds", "bootstrap"], default=None,
                   help="members differ by seed (default), or also by a bootstrap resample of the train split; "
                        "same as training.committee_mode")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from nnpes.training import train
    from nnpes.training.result import CommitteeResult

    try:
        overrides = list(args.overrides)
        if args.init_from:
            overrides.append(f"model.init_from={Path(args.init_from).resolve()}")
        if args.committee is not None:
            overrides.append(f"training.committee={args.committee}")
        if args.committee_mode is not None:
            overrides.append(f"training.committee_mode={args.committee_mode}")
        result = train(args.config, args.run_dir, resume=args.resume, overrides=overrides)
    except FileExistsError as e:
        raise ValueError(str(e)) from None
    if isinstance(result, CommitteeResult):
        print(f"committee of {len(result.members)} members saved to {result.model} "
              f"(std_scale {result.std_scale:.4g}); members in {Path(result.run_dir) / 'members'}")
        print(f"run directory: {result.run_dir} (test_metrics.json with the uncertainty, train.log)")
        return 0
    print(f"model saved to {result.model}")
    print(f"run directory: {result.run_dir} (metrics.csv, learning_curve.png, parity plots)")
    return 0
