"""``nnpes export MODEL OUT [--platforms cpu,cuda]``: the energy/forces/stress function as a
``jax.export`` artifact that runs with jax alone (``nnpes.potential.export``)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write the energy/forces/stress function as a jax.export artifact (runs without nnpes)",
        description="Serialize the jitted energy/forces/stress function of a saved model with jax.export "
        "(StableHLO, parameters included, symbolic sizes) into the directory OUT, with export.json describing "
        "the arguments, units and padding. Load it with jax alone: see docs/load_exported.py.")
    p.add_argument("model", help="a saved model directory or a run directory (uses RUN/model)")
    p.add_argument("out", help="output directory (energy_forces_stress.jaxexport, export.json)")
    p.add_argument("--platforms", default="cpu,cuda",
                   help="comma-separated platforms to lower for (cpu, cuda, rocm, tpu; default cpu,cuda)")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnpes.cli.evaluate import model_dir
    from nnpes.potential import load_potential
    from nnpes.potential.export import ARTIFACT_FILE, META_FILE, export_potential

    pot = load_potential(model_dir(args.model))
    platforms = [s.strip() for s in args.platforms.split(",") if s.strip()]
    out = export_potential(pot, args.out, platforms)
    size = (out / ARTIFACT_FILE).stat().st_size / 1e6
    print(f"exported {pot!r} for {', '.join(platforms)} to {out}: {ARTIFACT_FILE} ({size:.1f} MB), {META_FILE}; "
          "load it with jax alone (docs/load_exported.py)")
    return 0
