"""Reference labels from an ASE calculator: by default GFN2-xTB through tblite.

xTB on small molecules is 10-100x slower with OpenMP threads than without on a shared machine:
set ``OMP_NUM_THREADS=1`` before Python starts (the quickstart and the tests do).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator


def xtb_calculator(method: str = "GFN2-xTB", **kwargs):
    """``tblite.ase.TBLite`` (energies eV, forces eV/Å), quiet by default."""
    if os.environ.get("OMP_NUM_THREADS") is None:
        import warnings

        warnings.warn("OMP_NUM_THREADS is not set: xTB may run far slower with threads; export OMP_NUM_THREADS=1",
                      stacklevel=2)
    from tblite.ase import TBLite

    kwargs.setdefault("verbosity", 0)
    return TBLite(method=method, **kwargs)


def snapshot(atoms: Atoms, stress: bool = False) -> Atoms:
    """A copy of ``atoms`` holding its calculator's current energy/forces (and stress) as a
    SinglePointCalculator; computes them if needed."""
    energy = atoms.get_potential_energy()
    # The calculator's forces, not constraint-adjusted ones (FixCom rewrites forces in ase 3.29):
    # the label must be −∂E/∂R of the reference energy.
    forces = atoms.get_forces(apply_constraint=False)
    results = {"energy": float(energy), "forces": np.array(forces, np.float64)}
    if stress:
        results["stress"] = np.array(atoms.get_stress(), np.float64)
    copy = atoms.copy()
    copy.calc = SinglePointCalculator(copy, **results)
    return copy


def label(atoms_list: Sequence[Atoms], calculator=None, *, stress: bool | None = None) -> list[Atoms]:
    """Copies of ``atoms_list`` labelled by ``calculator`` (default GFN2-xTB). ``stress=None``:
    only for fully periodic structures. A failing frame raises naming its index."""
    calc = calculator if calculator is not None else xtb_calculator()
    out = []
    for k, atoms in enumerate(atoms_list):
        a = atoms.copy()
        a.calc = calc
        want_stress = bool(np.all(a.pbc)) if stress is None else stress
        try:
            out.append(snapshot(a, stress=want_stress))
        except Exception as e:  # the calculator's own errors vary (SCF not converged, ...)
            raise RuntimeError(f"oracle failed on structure {k} ({a.get_chemical_formula()}): {e}") from e
    return out
