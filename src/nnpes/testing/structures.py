"""Random test structures for the physics battery: molecules and triclinic periodic cells (also
smaller than the cutoff), rotations, and an EMT-labelled set for models that calibrate on data."""

from __future__ import annotations

import numpy as np
from ase import Atoms

ELEMENTS = ["H", "C", "O"]
CUTOFF = 3.0  # Å
KINDS = ("molecule", "small_cell", "cell")
PERIODIC_KINDS = ("small_cell", "cell")


def random_molecule(rng, n: int = 6, box: float = 2.6, min_dist: float = 0.9, elements=ELEMENTS) -> Atoms:
    """``n`` atoms uniform in a ``box`` Å cube, no pair closer than ``min_dist`` Å."""
    while True:
        pos = rng.uniform(0, box, (n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
        if d.min() > min_dist:
            break
    symbols = [elements[k % len(elements)] for k in range(n)]
    rng.shuffle(symbols)
    return Atoms(symbols, positions=pos, pbc=False)


def random_cell(rng, n: int = 2, length: float = 2.6, min_dist: float = 0.9, elements=ELEMENTS,
                cutoff: float = CUTOFF) -> Atoms:
    """Triclinic periodic cell of edge ≈ ``length`` Å; with length < cutoff an atom sees several
    images of itself."""
    cell = length * np.eye(3) + rng.uniform(-0.3, 0.3, (3, 3))
    while True:
        atoms = Atoms(
            [elements[k % len(elements)] for k in range(n)], scaled_positions=rng.uniform(0, 1, (n, 3)),
            cell=cell, pbc=True,
        )
        if min_image_distance(atoms, cutoff) > min_dist:
            return atoms


def min_image_distance(atoms: Atoms, cutoff: float = CUTOFF) -> float:
    """Shortest interatomic distance (Å) including periodic images; inf when none is within cutoff."""
    from nnpes.graph.neighbors import neighbor_list

    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    v = atoms.positions[nl.senders] - atoms.positions[nl.receivers] + nl.shifts @ atoms.cell.array
    return float(np.linalg.norm(v, axis=1).min()) if len(v) else np.inf


def make_structure(kind: str, seed: int = 0, elements=ELEMENTS, cutoff: float = CUTOFF) -> Atoms:
    """One of ``KINDS``: a 6-atom molecule, a 2-atom cell smaller than the cutoff, a 5-atom cell."""
    rng = np.random.default_rng(seed)
    if kind == "molecule":
        return random_molecule(rng, elements=elements)
    if kind == "small_cell":
        return random_cell(rng, n=2, length=2.6, elements=elements, cutoff=cutoff)
    if kind == "cell":
        return random_cell(rng, n=5, length=4.0, elements=elements, cutoff=cutoff)
    raise ValueError(f"unknown structure kind {kind!r}; expected one of {KINDS}")


def labelled_dataset(seed: int = 123, n: int = 6) -> list[Atoms]:
    """Random H/C/O structures labelled by ase's EMT: feeds E0/scale and calibrate hooks."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = random_molecule(rng, n=5) if k % 2 else random_cell(rng, n=3, length=3.2)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        out.append(atoms)
    return out


def random_rotation(seed) -> np.ndarray:
    """A uniformly random proper rotation matrix (3, 3)."""
    from scipy.spatial.transform import Rotation

    return Rotation.random(random_state=seed).as_matrix()


def transformed(atoms: Atoms, rot=None, shift=None, positions=None) -> Atoms:
    """A copy with new ``positions`` (Å), then rotated by ``rot`` (cell too), then shifted by ``shift``."""
    a = atoms.copy()
    if positions is not None:
        a.positions = positions
    if rot is not None:
        a.positions = a.positions @ rot.T
        if a.pbc.any():
            a.cell = a.cell.array @ rot.T
    if shift is not None:
        a.positions = a.positions + shift
    return a
