"""Host-side cost of the Potential API around the model: ``predict`` and the ase calculator versus
the bare jitted energy/forces call, on rMD17 aspirin (21 atoms).

    python benchmarks/predict_overhead.py [--model nequip|behler_parrinello] [--repeats 30]

float32, default (standard-size) hyperparameters, untrained weights (speed does not depend on them).
"bare": jitted ``energy_forces_stress`` on a graph padded and moved to the device beforehand.
"predict": ``pot.predict(atoms)`` from an ase.Atoms (neighbour list, padding, transfer, numpy out).
"calculator": ``atoms.get_forces()`` after moving the atoms (what an ase optimiser or MD step pays).
"predict batch": ``pot.predict(list of 64 frames)``, time per frame.
Median of --repeats calls after warm-up, ``block_until_ready`` on device outputs.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from nnpes.data import read_structures
from nnpes.potential import build_potential

from timing import repeat  # this directory is on sys.path

ASPIRIN = "/work/shared/data/rmd17/rmd17_aspirin_train_01.npz"


def ms(t):
    """(wall, CPU) medians in ms. CPU time (all threads of this process) is the figure to compare
    on the shared machine, where wall time includes waiting for a core."""
    return 1e3 * t.median, 1e3 * t.cpu_median


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="nequip")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    frames = read_structures(ASPIRIN, index=":64", energy_unit="kcal/mol")
    pot = build_potential({"name": args.model, "elements": ["H", "C", "O"], "cutoff": 5.0})
    atoms = frames[0].copy()
    atoms.calc = None

    graph = pot.device_graph(atoms)
    fn = jax.jit(lambda p, g: pot.energy_forces_stress(p, g, False))
    bare = ms(repeat(lambda: fn(pot.params, graph), args.repeats))
    predict = ms(repeat(lambda: pot.predict(atoms), args.repeats))

    calc_atoms = atoms.copy()
    calc_atoms.calc = pot.calculator()
    rng = np.random.default_rng(0)

    def step():
        calc_atoms.positions += rng.normal(scale=1e-3, size=calc_atoms.positions.shape)
        calc_atoms.get_forces()

    calc = ms(repeat(step, args.repeats))
    plain = [f.copy() for f in frames]
    for f in plain:
        f.calc = None
    many = [t / len(plain) for t in ms(repeat(lambda: pot.predict(plain), max(3, args.repeats // 5)))]
    print(f"model {args.model}, aspirin 21 atoms, float32, {jax.devices()[0].platform}, compiles {pot.n_compiles}")
    print("                         wall ms   CPU ms")
    for label, (w, c) in [("bare jitted call", bare), ("predict(atoms)", predict),
                          ("calculator.get_forces", calc), ("predict(64 frames)/frame", many)]:
        print(f"  {label:<24} {w:8.3f} {c:8.3f}")


if __name__ == "__main__":
    main()
