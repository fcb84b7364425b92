"""``nnpes config template [MODEL]`` and ``nnpes config check FILE [--set ...]``."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("config", help="print a config template or check a config",
                              description="Print a commented config with every default, or validate one.")
    sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    t = sub.add_parser("template", help="print a commented config with every default")
    t.add_argument("model", nargs="?", default="nequip", help="registered model name (default nequip)")
    t.add_argument("--elements", default="H,C,O", help="comma-separated elements (default H,C,O)")
    t.set_defaults(func=run_template)
    c = sub.add_parser("check", help="validate a config (keys, types, data files)")
    c.add_argument("file")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    c.set_defaults(func=run_check)


def run_template(args) -> int:
    from nnpes.config import template

    print(template(args.model, [s.strip() for s in args.elements.split(",") if s.strip()]), end="")
    return 0


def run_check(args) -> int:
    from nnpes.config import check_config

    cfg = check_config(args.file, args.overrides)
    files = ", ".join(cfg.data.train_files)
    print(f"{args.file}: OK (model {cfg.model.name}, elements {cfg.model.elements}, data {files})")
    return 0
