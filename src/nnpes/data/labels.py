"""The reference labels a structure carries: energy (eV), forces (N,3) eV/Å, stress (3,3) eV/Å³.

One precedence everywhere: ``info['energy']`` / ``info['stress']`` override the attached calculator's
results (a SinglePointCalculator), ``arrays['forces']`` is used when the calculator has none.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from ase import Atoms

from nnpes import keys


def raw_labels(atoms: Atoms) -> dict:
    """The energy/forces/stress a frame carries, unconverted and unreshaped (absent → missing key)."""
    results = getattr(atoms.calc, "results", None) or {}
    energy = atoms.info.get(keys.ENERGY, results.get("energy", results.get("free_energy")))
    forces = results.get("forces")
    if forces is None:
        forces = atoms.arrays.get(keys.FORCES)
    stress = atoms.info.get(keys.STRESS, results.get("stress"))
    found = ((keys.ENERGY, energy), (keys.FORCES, forces), (keys.STRESS, stress))
    return {name: value for name, value in found if value is not None}


def voigt_to_matrix(stress) -> np.ndarray:
    """(3,3) from a (3,3) or ase Voigt (6,) stress, order xx yy zz yz xz xy."""
    stress = np.asarray(stress, np.float64)
    if stress.shape == (6,):
        xx, yy, zz, yz, xz, xy = stress
        stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return stress.reshape(3, 3)


class Labels(NamedTuple):
    energy: float | None  # eV
    forces: np.ndarray | None  # (N,3) eV/Å
    stress: np.ndarray | None  # (3,3) eV/Å³, ase sign


def reference_labels(atoms: Atoms) -> Labels:
    """The structure's labels as float64 (None where absent)."""
    raw = raw_labels(atoms)
    energy = raw.get(keys.ENERGY)
    forces = raw.get(keys.FORCES)
    stress = raw.get(keys.STRESS)
    return Labels(
        None if energy is None else float(energy),
        None if forces is None else np.asarray(forces, np.float64),
        None if stress is None else voigt_to_matrix(stress),
    )
