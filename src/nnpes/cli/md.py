"""``nnpes md MODEL STRUCTURE``: molecular dynamics with a saved potential."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "md", help="run molecular dynamics with a saved potential",
        description="Molecular dynamics (NVE velocity Verlet, NVT Langevin BAOAB or Nosé–Hoover chain, NPT Langevin "
        "with stochastic cell rescaling). "
        "Writes OUT/thermo.log (a header with the settings; for periodic cells also volume, pressure and stress "
        "in GPa, model plus kinetic term) and OUT/trajectory.extxyz as it runs, and stops with an error when the run "
        "blows up (temperature, energy drift, atoms too close or flying apart).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="a saved model directory (Potential.save) or a training run directory (uses RUN/model)")
    p.add_argument("structure", help="structure file readable by ase (the last frame is used unless --index)")
    p.add_argument("--index", type=int, default=-1, help="frame of STRUCTURE to start from")
    p.add_argument("--ensemble", choices=["nve", "nvt", "npt"], default="nve",
                   help="npt: Langevin thermostat and stochastic cell rescaling (see --npt-cell), periodic cells only")
    p.add_argument("--thermostat", choices=["langevin", "nose-hoover"], default="langevin", help="for nvt")
    p.add_argument("--temperature", type=float, default=300.0,
                   help="K: thermostat target, and initial velocities when the structure has none")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--tau", type=float, default=100.0, help="Nosé–Hoover period, fs")
    p.add_argument("--pressure", type=float, default=0.0, help="npt target pressure, GPa (1 bar = 1e-4 GPa)")
    p.add_argument("--tau-p", type=float, default=1000.0, help="npt: relaxation time of the volume, fs")
    p.add_argument("--compressibility", type=float, default=0.01,
                   help="npt: the material's isothermal compressibility, 1/GPa, a guess (metals ~0.01, water 0.45); "
                        "a wrong one changes how fast the volume relaxes, not the ensemble")
    p.add_argument("--npt-cell", choices=["isotropic", "flexible"], default="isotropic",
                   help="npt: scale the cell as a whole, or let every cell length and angle move (anisotropic "
                        "stress, phase changes of crystals)")
    p.add_argument("--thermo-every", type=int, default=10, help="steps between thermo lines")
    p.add_argument("--traj-every", type=int, default=100, help="steps between trajectory frames")
    p.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin, Å")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("blow-up checks", "after every thermo interval; a run that passes one stops with an "
                             "error (rc 1), keeping the thermo log and trajectory so far; 'inf' switches a check off")
    g.add_argument("--max-temperature", type=float, default=None, metavar="K",
                   help="stop above this temperature; unset: nvt 10x --temperature, at least 1000 K, "
                        "nve the larger of 5000 K and 10x the starting temperature")
    g.add_argument("--max-energy-drift", type=float, default=0.1, metavar="EV_PER_ATOM",
                   help="stop when the conserved energy (nve: E_tot; nose-hoover: with the chain's energy; langevin: "
                        "less the thermostat's heat) drifts more than this from its start")
    g.add_argument("--min-distance", type=float, default=0.5, metavar="A",
                   help="stop when two atoms are closer than this (also checked before the first step; 0: off)")
    g.add_argument("--max-displacement", type=float, default=None, metavar="A",
                   help="stop when an atom moves more than this in one thermo interval: atoms flying apart; "
                        "unset: the larger of the model cutoff and 0.2 A/fs x the interval")
    p.add_argument("--out", default="md_out", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def read_structure(path: str, index: int = -1):
    """Frame ``index`` of the structure file ``path`` (any format ase reads) as ase Atoms; a missing or
    unreadable file is a one-line error."""
    from pathlib import Path

    from ase.io import read

    from nnpes.errors import UserError

    if not Path(path).is_file():
        raise FileNotFoundError(f"structure file {path!r} not found")
    try:
        return read(path, index=index)
    except Exception as e:  # noqa: BLE001 - ase raises many types for a file it cannot parse
        raise UserError(f"{path}: could not be read (frame {index}): {type(e).__name__}: {e}") from e


def run(args) -> int:
    from nnpes.cli.evaluate import model_dir
    from nnpes.md import MDConfig, MDInstability, check_elements, run_md
    from nnpes.md.run import output_dir
    from nnpes.potential import load_potential

    output_dir(args.out)  # a bad --out fails before the model loads and anything compiles
    pot = load_potential(model_dir(args.model))
    atoms = read_structure(args.structure, args.index)
    check_elements(pot, atoms, f"{args.structure} (frame {args.index})")
    cfg = MDConfig(
        steps=args.steps, timestep=args.timestep, ensemble=args.ensemble, temperature=args.temperature,
        thermostat=args.thermostat, friction=args.friction, tau=args.tau, thermo_every=args.thermo_every,
        traj_every=args.traj_every, seed=args.seed, skin=args.skin, max_temperature=args.max_temperature,
        max_energy_drift=args.max_energy_drift, min_distance=args.min_distance, max_displacement=args.max_displacement,
        pressure=args.pressure, tau_p=args.tau_p, compressibility=args.compressibility, npt_cell=args.npt_cell,
    )
    try:
        res = run_md(pot, atoms, cfg, out_dir=args.out, progress=not args.no_progress,
                     note=f"model {args.model}, structure {args.structure} frame {args.index}")
    except MDInstability as e:  # the run failed: say so in one line, with a non-zero exit code
        print(f"nnpes md: error: {e}", file=sys.stderr)
        return 1
    t = res.timing
    speed = (f"{res.ns_per_day:.3f} ns/day, {1e3 * t.step_s / t.steps_timed:.2f} ms/step (the {t.steps_timed} steps "
             "of blocks that compiled nothing)" if t.steps_timed else "ns/day n/a (every block compiled: run more steps)")
    print(f"{res.steps} steps of {args.timestep} fs ({len(atoms)} atoms) in {res.wall_s:.1f} s: {speed}")
    print(f"not steps: {t.summary()}; output in {args.out}")
    return 0
