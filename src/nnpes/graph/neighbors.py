"""Host-side neighbour lists (vesin's C++ cell list), full lists with integer cell shifts.

Convention used everywhere in nnpes: an edge (receiver i, sender j, shift S) means atom j,
displaced by the lattice translation S @ cell, lies within the cutoff of atom i, and

    vector_ij = positions[j] - positions[i] + S @ cell      (Å)

The list is full (both i→j and j→i), sorted by receiver so that message aggregation can use
``segment_sum(..., indices_are_sorted=True)``. Cells of any shape, cells smaller than the
cutoff (many images of an atom), mixed periodicity and molecules without a cell are handled.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import vesin


class HostNeighborList(NamedTuple):
    receivers: np.ndarray  # (E,) int32, centre atom i
    senders: np.ndarray  # (E,) int32, neighbour atom j
    shifts: np.ndarray  # (E, 3) int32, cell images of j


MAX_EXTENT = 1e5  # Å: the largest span of the atoms along a non-periodic direction (a blown-up MD goes far beyond)


def check_extent(positions: np.ndarray, pbc: np.ndarray) -> None:
    """ValueError for non-finite positions, or atoms spanning more than ``MAX_EXTENT`` Å along a
    non-periodic direction: cell lists over such a span overflow (SIGFPE in vesin, an impossible
    bin count on device), and no atomistic structure is that large; atoms that flew apart are."""
    if not np.all(np.isfinite(positions)):
        bad = np.flatnonzero(~np.isfinite(positions).all(axis=1)).tolist()
        raise ValueError(f"non-finite positions for atoms {bad[:10]}")
    free = ~np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if len(positions) and free.any():
        span = float(np.ptp(positions[:, free], axis=0).max())
        if span > MAX_EXTENT:
            raise ValueError(f"the atoms span {span:.3g} Å along a non-periodic direction, more than {MAX_EXTENT:.0e} Å: "
                             "atoms flew apart (a blown-up MD run?); check the structure")


def _box_for_vesin(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """vesin needs a non-singular box. ase lets a non-periodic direction have a zero (or any)
    cell vector, so where the cell is singular those rows become long vectors orthogonal to the
    periodic ones; no image is ever made along them, so their length only has to exceed the span."""
    if not pbc.any():
        return np.zeros((3, 3))
    scale = max(1.0, np.abs(cell).max())
    if abs(np.linalg.det(cell)) > 1e-8 * scale**3:
        return cell
    periodic = cell[pbc]
    if np.linalg.matrix_rank(periodic, tol=1e-8 * scale) < len(periodic):
        raise ValueError(f"the periodic cell vectors {periodic.tolist()} are linearly dependent")
    span = np.ptp(positions, axis=0).max() if len(positions) else 0.0
    length = 2.0 * (span + np.abs(cell).sum()) + 1.0
    # Orthonormal directions spanning the complement of the periodic vectors: the last rows of
    # V in the SVD of the periodic block.
    _, _, vt = np.linalg.svd(np.vstack([periodic, np.zeros((3 - len(periodic), 3))]))
    box = cell.copy()
    for d, v in zip(np.flatnonzero(~pbc), vt[len(periodic):]):
        box[d] = length * v
    return box


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray | None,
    pbc,
    cutoff: float,
) -> HostNeighborList:
    """Full neighbour list within ``cutoff`` (Å), sorted by receiver.

    positions: (N, 3) Å; cell: (3, 3) Å rows = lattice vectors (ignored where pbc is False);
    pbc: bool or (3,) bools.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if cell is None:
        cell = np.zeros((3, 3))
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    for d in np.flatnonzero(pbc):
        if np.linalg.norm(cell[d]) < 1e-8:
            raise ValueError(f"direction {d} is periodic but its cell vector is zero")
    check_extent(positions, pbc)
    n = len(positions)
    if n == 0:
        empty = np.zeros(0, np.int32)
        return HostNeighborList(empty, empty, np.zeros((0, 3), np.int32))
    box = _box_for_vesin(cell, pbc, positions)
    calc = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = calc.compute(points=positions, box=box, periodic=pbc if pbc.any() else False, quantities="ijS")
    i = i.astype(np.int32)
    # vesin's output is deterministic but not receiver-sorted; a stable int32 sort is ~4x cheaper
    # than a lexsort on (i, j) at 10^5 atoms and keeps the order reproducible.
    order = np.argsort(i, kind="stable")
    return HostNeighborList(i[order], j[order].astype(np.int32), s[order].astype(np.int32))
