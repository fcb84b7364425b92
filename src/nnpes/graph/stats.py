"""Training-set statistics that models are initialised from, computed from the set's graphs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jraph
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from nnpes import keys
from nnpes.data.validate import DataError
from nnpes.graph.build import atoms_to_graph


@dataclass
class DatasetStats:
    e0: dict[str, float]  # eV per element, minimum-norm least squares of E over element counts
    force_rms: float  # eV/Å, RMS of force components
    avg_num_neighbors: float  # mean neighbours within the cutoff per atom
    energy_residual_rms: float  # eV/atom, RMS of E - Σ E0 per atom after the fit
    n_structures: int


def graph_stats(graphs: Sequence[jraph.GraphsTuple], elements: Sequence[str]) -> DatasetStats:
    """Statistics of a (training) set of single-structure graphs built at the model's cutoff.

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
    counts = np.zeros((len(graphs), len(elements)))
    energies = np.full(len(graphs), np.nan)
    f2, nf, n_edges, n_atoms = 0.0, 0, 0, 0
    for m, g in enumerate(graphs):
        numbers = np.asarray(g.nodes[keys.NUMBERS])
        for z, c in zip(*np.unique(numbers, return_counts=True)):
            s = chemical_symbols[z]
            if s not in index:
                raise DataError("dataset", f"element {s!r} is not in the model's elements {list(elements)}", m)
            counts[m, index[s]] += c
        if g.globals[keys.HAS_ENERGY][0] > 0:
            energies[m] = g.globals[keys.ENERGY][0]
        if g.globals[keys.HAS_FORCES][0] > 0:
            forces = np.asarray(g.nodes[keys.FORCES], np.float64)
            f2 += float(np.sum(np.square(forces)))
            nf += forces.size
        n_edges += int(np.sum(g.n_edge))
        n_atoms += len(numbers)
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
        n_structures=len(graphs),
    )


def check_known_elements(atoms_list: Sequence[Atoms], elements: Sequence[str]) -> None:
    """``DataError`` naming the file and frame of the first structure with an element the model lacks."""
    for m, atoms in enumerate(atoms_list):
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(elements))
        if unknown:
            raise DataError(atoms.info.get("source", "dataset"),
                            f"element(s) {unknown} not in the model's elements {list(elements)}; "
                            "add them to the model section", int(atoms.info.get("frame", m)))


def compute_stats(atoms_list: Sequence[Atoms], elements: Sequence[str], cutoff: float) -> DatasetStats:
    """``graph_stats`` of labelled structures, with the neighbours counted within ``cutoff`` (Å)."""
    check_known_elements(atoms_list, elements)
    return graph_stats([atoms_to_graph(a, cutoff) for a in atoms_list], elements)
