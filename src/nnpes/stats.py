"""Training-set statistics that models are initialised from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase import Atoms

from nnpes.data.validate import DataError
from nnpes.graph import _labels
from nnpes.neighbors import neighbor_list


@dataclass
class DatasetStats:
    e0: dict[str, float]  # eV per element, minimum-norm least squares of E over element counts
    force_rms: float  # eV/Å, RMS of force components
    avg_num_neighbors: float  # mean neighbours within the cutoff per atom
    energy_residual_rms: float  # eV/atom, RMS of E - Σ E0 per atom after the fit
    n_structures: int


def compute_stats(atoms_list: Sequence[Atoms], elements: Sequence[str], cutoff: float) -> DatasetStats:
    """Statistics of a (training) set: E0, force RMS (eV/Å), ⟨neighbours within ``cutoff``⟩ (Å).

    E0 solves min ||counts @ e0 - E|| over the structures that have an energy (counts: (M, S)
    atoms of each element). Where the compositions do not determine every element's E0 (an
    element absent from the set, or one molecule whose composition never changes, as in
    rMD17), the minimum-norm solution is taken (SVD least squares = the limit of a vanishing
    ridge): absent elements get 0, and for a single composition c every element gets
    E0_Z = c_Z·⟨E⟩/|c|², so Σ_Z c_Z E0_Z = ⟨E⟩ and the residual is still the fluctuation about
    the mean. Such E0 are not per-element reference energies; pass measured isolated-atom
    energies instead when they are known. force_rms is the RMS of all force components
    (1.0 when no structure has forces).
    """
    index = {s: k for k, s in enumerate(elements)}
    counts = np.zeros((len(atoms_list), len(elements)))
    energies = np.full(len(atoms_list), np.nan)
    f2, nf, n_edges, n_atoms = 0.0, 0, 0, 0
    for m, atoms in enumerate(atoms_list):
        for s in atoms.get_chemical_symbols():
            if s not in index:
                raise DataError(
                    atoms.info.get("source", "dataset"),
                    f"element {s!r} is not in the model's elements {list(elements)}",
                    atoms.info.get("frame", m),
                )
            counts[m, index[s]] += 1
        energy, forces, _ = _labels(atoms)
        if energy is not None:
            energies[m] = energy
        if forces is not None:
            forces = np.asarray(forces, np.float64)
            f2 += float(np.sum(np.square(forces)))
            nf += forces.size
        nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
        n_edges += len(nl.senders)
        n_atoms += len(atoms)
    have = ~np.isnan(energies)
    e0 = np.zeros(len(elements))
    resid = 0.0
    if have.any():
        a, y = counts[have], energies[have]
        e0 = np.linalg.lstsq(a, y, rcond=None)[0]
        resid = float(np.sqrt(np.mean(np.square((y - a @ e0) / a.sum(1)))))
    return DatasetStats(
        e0={s: float(e0[k]) for s, k in index.items()},
        force_rms=float(np.sqrt(f2 / nf)) if nf else 1.0,
        avg_num_neighbors=n_edges / max(n_atoms, 1),
        energy_residual_rms=resid,
        n_structures=len(atoms_list),
    )
