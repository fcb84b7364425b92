"""Neighbour lists against ase.neighborlist on seeded random cells of every kind."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from nnpes import keys
from nnpes.graph import atoms_to_graph
from nnpes.graph.neighbors import neighbor_list


def _random_cell(rng, kind):
    """(cell, pbc) of one kind; the positions are placed in and far outside the cell."""
    pbc = np.ones(3, bool)
    cell = rng.normal(size=(3, 3)) * rng.uniform(0.5, 3.0) + np.eye(3) * rng.uniform(1.0, 6.0)
    if kind == "small_skewed":  # cell much smaller than the cutoff: many images of each atom
        cell = np.eye(3) * rng.uniform(0.9, 2.0) + rng.normal(size=(3, 3)) * 0.5
    elif kind == "mixed":
        pbc = rng.random(3) < 0.5
    elif kind == "slab_zero_vector":
        d = rng.integers(3)
        pbc[d] = False
        cell[d] = 0.0
    elif kind == "small_slab_zero_vector":
        d = rng.integers(3)
        pbc[d] = False
        cell = np.eye(3) * rng.uniform(0.9, 2.0) + rng.normal(size=(3, 3)) * 0.4
        cell[d] = 0.0
    elif kind == "wire":  # one short periodic vector, two zero vectors
        d = rng.integers(3)
        pbc[:] = False
        pbc[d] = True
        v = rng.normal(size=3)
        cell = np.zeros((3, 3))
        cell[d] = v / np.linalg.norm(v) * rng.uniform(0.8, 3.0)
    elif kind == "molecule":
        pbc[:] = False
        cell = np.zeros((3, 3))
    return cell, pbc


KINDS = ["triclinic", "small_skewed", "mixed", "slab_zero_vector", "small_slab_zero_vector", "wire", "molecule"]


def _cases(seed, per_kind):
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        made = 0
        while made < per_kind:
            cell, pbc = _random_cell(rng, kind)
            if pbc.all():
                # ase's binning crawls on needle-like cells; keep cells reasonably conditioned.
                if abs(np.linalg.det(cell)) < 0.15 * np.prod(np.linalg.norm(cell, axis=1)):
                    continue
            n = int(rng.integers(1, 10))
            frac = rng.uniform(-1.5, 2.5, size=(n, 3))  # unwrapped: up to 2 cells outside
            positions = frac @ cell + rng.normal(size=(n, 3)) * (3.0 if not pbc.all() else 0.0)
            cutoff = float(rng.uniform(1.0, 4.5))
            yield kind, Atoms(numbers=np.ones(n, int), positions=positions, cell=cell, pbc=pbc), cutoff
            made += 1


def _triples(i, j, s):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(s).tolist())))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_ase_on_random_cells(seed):
    kinds_seen = set()
    for kind, atoms, cutoff in _cases(seed, per_kind=8):
        i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
        nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
        assert _triples(nl.receivers, nl.senders, nl.shifts) == _triples(i, j, s), (kind, atoms.cell.array, atoms.pbc)
        assert len(nl.receivers) == len(i)  # no duplicates either
        assert np.all(np.diff(nl.receivers) >= 0), "not sorted by receiver"
        if np.any(nl.shifts):
            kinds_seen.add(kind)
    assert {"small_skewed", "small_slab_zero_vector", "wire"} <= kinds_seen  # images were really made


def test_vector_convention_matches_ase_distances():
    rng = np.random.default_rng(3)
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms.cell[:] = atoms.cell.array + rng.normal(size=(3, 3)) * 0.3
    atoms.positions += rng.normal(size=atoms.positions.shape) * 0.2 + 7.0  # outside the cell
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
    vec = atoms.positions[nl.senders] - atoms.positions[nl.receivers] + nl.shifts @ atoms.cell.array
    i, j, D = ase_neighbor_list("ijD", atoms, 4.0)
    ours = {(a, b, tuple(np.round(v, 8))) for a, b, v in zip(nl.receivers, nl.senders, vec)}
    theirs = {(a, b, tuple(np.round(v, 8))) for a, b, v in zip(i, j, D)}
    assert ours == theirs
    assert np.all(np.linalg.norm(vec, axis=1) < 4.0)


def test_wrapping_changes_shifts_not_geometry():
    rng = np.random.default_rng(4)
    atoms = Atoms("Cu8", positions=rng.uniform(-6, 12, (8, 3)), cell=[[4, 0.5, 0], [0.3, 4.5, 0.2], [0, 0.4, 3.8]], pbc=True)
    wrapped = atoms.copy()
    wrapped.wrap()

    def geometry(a):
        nl = neighbor_list(a.positions, a.cell.array, a.pbc, 3.5)
        vec = a.positions[nl.senders] - a.positions[nl.receivers] + nl.shifts @ a.cell.array
        return sorted((r, s, *np.round(v, 8)) for r, s, v in zip(nl.receivers, nl.senders, vec))

    assert geometry(atoms) == geometry(wrapped)


def test_molecule_without_cell_and_empty():
    mol = molecule("CH3CH2OH")
    nl = neighbor_list(mol.positions, None, False, 2.0)
    i, j = ase_neighbor_list("ij", mol, 2.0)
    assert _triples(nl.receivers, nl.senders, nl.shifts) == _triples(i, j, np.zeros((len(i), 3), int))
    empty = neighbor_list(np.zeros((0, 3)), None, False, 5.0)
    assert empty.receivers.shape == (0,) and empty.shifts.shape == (0, 3)
    lone = neighbor_list(np.zeros((1, 3)), np.eye(3) * 10, True, 5.0)
    assert len(lone.receivers) == 0  # no self pair without a shift


def test_bad_cells_raise_clear_errors():
    with pytest.raises(ValueError, match="direction 2 is periodic but its cell vector is zero"):
        neighbor_list(np.zeros((2, 3)), [[3, 0, 0], [0, 3, 0], [0, 0, 0]], True, 2.0)
    with pytest.raises(ValueError, match="linearly dependent"):
        neighbor_list(np.zeros((2, 3)), [[3, 0, 0], [6, 0, 0], [0, 0, 0]], [True, True, False], 2.0)


def test_graph_holds_the_neighbour_list_and_labels():
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    forces = np.arange(12.0).reshape(4, 3)
    atoms.calc = SinglePointCalculator(atoms, energy=-3.5, forces=forces)
    g = atoms_to_graph(atoms, 3.0)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.0)
    np.testing.assert_array_equal(g.senders, nl.senders)
    np.testing.assert_array_equal(g.edges[keys.SHIFTS], nl.shifts)
    assert g.n_edge[0] == 4 * 12 and g.n_node[0] == 4
    assert g.globals[keys.ENERGY][0] == -3.5 and g.globals[keys.HAS_STRESS][0] == 0.0
    np.testing.assert_array_equal(g.nodes[keys.FORCES], forces)
