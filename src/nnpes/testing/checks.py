"""Symmetry and derivative checks: E invariant and F, σ equivariant under rotations, translations,
inversion, permutations and lattice translations; F = −∂E/∂R and σ = (1/V) ∂E/∂ε by central
finite differences. Each takes a ``Potential`` or an ``Evaluator`` (share one to compile once) and
raises AssertionError naming the check and the size of the violation."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from nnpes.testing.evaluator import as_evaluator
from nnpes.testing.structures import random_rotation, transformed

DEFAULT_SHIFT = np.array([0.37, -1.21, 2.9])  # Å
VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


def assert_close(check: str, what: str, actual, desired, rtol: float = 0.0, atol: float = 0.0) -> None:
    """AssertionError "<check>: <what>: max |Δ| = … (tolerance …)" unless |actual − desired| ≤
    atol + rtol·|desired| everywhere (numpy's assert_allclose rule)."""
    actual, desired = np.asarray(actual, float), np.asarray(desired, float)
    assert actual.shape == desired.shape, f"{check}: {what}: shapes {actual.shape} != {desired.shape}"
    diff = np.abs(actual - desired)
    if not np.all(diff <= atol + rtol * np.abs(desired)):
        raise AssertionError(f"{check}: {what}: max |Δ| = {diff.max():.3e} "
                             f"(tolerance atol={atol:g}, rtol={rtol:g})")


def _rotations(rotations):
    return [random_rotation(s) for s in (1, 2)] if rotations is None else [np.asarray(r) for r in rotations]


def check_invariance(pot, atoms: Atoms, rotations=None, shift=DEFAULT_SHIFT) -> None:
    """E(QR) = E(R) for each rotation (default: two random ones), E and F unchanged by a translation
    ``shift`` (Å). Also fails when E and F are both ~0 (the check would be vacuous)."""
    ev = as_evaluator(pot)
    rots = _rotations(rotations)
    base, *rest = ev([atoms] + [transformed(atoms, rot=r) for r in rots] + [transformed(atoms, shift=shift)])
    assert abs(base["energy"]) + np.abs(base["forces"]).max() > 1e-6, \
        f"{ev.name} invariance: E and F are ~0, the check is vacuous"
    for res in rest[:-1]:
        assert_close(f"{ev.name} invariance", "E not rotation invariant (eV)", res["energy"], base["energy"], 1e-10, 1e-10)
    assert_close(f"{ev.name} invariance", "E not translation invariant (eV)", rest[-1]["energy"], base["energy"], 1e-10, 1e-10)
    assert_close(f"{ev.name} invariance", "F not translation invariant (eV/Å)", rest[-1]["forces"], base["forces"], atol=1e-9)


def check_equivariance(pot, atoms: Atoms, rotations=None) -> None:
    """F(QR) = Q F(R) and, for periodic structures, σ(QR) = Q σ(R) Qᵀ (atol 1e-9)."""
    ev = as_evaluator(pot)
    rots = _rotations(rotations)
    base, *rest = ev([atoms] + [transformed(atoms, rot=r) for r in rots])
    check = f"{ev.name} equivariance"
    for res, rot in zip(rest, rots):
        assert_close(check, "F not rotation equivariant (eV/Å)", res["forces"], base["forces"] @ rot.T, atol=1e-9)
        if atoms.pbc.any():
            assert_close(check, "stress not equivariant (eV/Å³)", res["stress"], rot @ base["stress"] @ rot.T, atol=1e-9)


def check_parity(pot, atoms: Atoms) -> None:
    """E(3) models: E(−R) = E(R), F(−R) = −F(R). A lattice is inversion symmetric, so a cell keeps
    its vectors while the atoms are inverted. (Skip it for SE(3)-only models.)"""
    ev = as_evaluator(pot)
    base, inv = ev([atoms, transformed(atoms, positions=-atoms.positions)])
    assert_close(f"{ev.name} parity", "E not parity invariant (eV)", inv["energy"], base["energy"], 1e-10, 1e-10)
    assert_close(f"{ev.name} parity", "F not parity odd (eV/Å)", inv["forces"], -base["forces"], atol=1e-9)


def check_permutation(pot, atoms: Atoms, perm=None) -> None:
    """Permuting atoms (default: a random permutation, seed 0) leaves E unchanged and permutes
    forces and per-atom energies."""
    ev = as_evaluator(pot)
    perm = np.random.default_rng(0).permutation(len(atoms)) if perm is None else np.asarray(perm)
    base, res = ev([atoms, atoms[perm]])
    assert_close(f"{ev.name} permutation", "E not permutation invariant (eV)", res["energy"], base["energy"], 1e-10, 1e-10)
    assert_close(f"{ev.name} permutation", "F not permuted (eV/Å)", res["forces"], base["forces"][perm], atol=1e-9)
    assert_close(f"{ev.name} permutation", "per-atom E not permuted (eV)", res["energies"], base["energies"][perm], atol=1e-9)


def check_periodic_images(pot, atoms: Atoms, lattice_shift=(1, -2, 1)) -> None:
    """Moving atom 0 of a periodic cell by a lattice vector changes neither E, F nor σ."""
    ev = as_evaluator(pot)
    wrapped = atoms.copy()
    wrapped.positions[0] += np.asarray(lattice_shift) @ atoms.cell.array
    base, res = ev([atoms, wrapped])
    assert_close(f"{ev.name} periodic images", "lattice translation changed E (eV)", res["energy"], base["energy"], 1e-10, 1e-10)
    assert_close(f"{ev.name} periodic images", "lattice translation changed F (eV/Å)", res["forces"], base["forces"], atol=1e-9)
    assert_close(f"{ev.name} periodic images", "lattice translation changed σ (eV/Å³)", res["stress"], base["stress"], atol=1e-9)


def check_forces(pot, atoms: Atoms, h: float = 1e-5, tol: float = 1e-6) -> None:
    """F = −∂E/∂R against central finite differences of step ``h`` (Å), every component:
    max |F_fd − F| / max |F| < ``tol``. Use float64."""
    ev = as_evaluator(pot)
    displaced = []
    for i in range(len(atoms)):
        for d in range(3):
            for sign in (1, -1):
                a = atoms.copy()
                a.positions[i, d] += sign * h
                displaced.append(a)
    res = ev([atoms] + displaced)
    e = np.array([r["energy"] for r in res[1:]]).reshape(len(atoms), 3, 2)
    f_fd = -(e[..., 0] - e[..., 1]) / (2 * h)
    f = res[0]["forces"]
    err = np.abs(f_fd - f).max() / np.abs(f).max()
    assert err < tol, f"{ev.name} forces: F differs from −dE/dR by {err:.2e} (relative, tolerance {tol:g})\n{f}\n{f_fd}"


def check_stress(pot, atoms: Atoms, h: float = 1e-5, tol: float = 1e-6) -> None:
    """σ = (1/V) ∂E/∂ε (ase sign) against central finite differences of E under symmetric strain
    ``h`` of cell and positions; σ symmetric (atol 1e-12). Periodic structures only."""
    ev = as_evaluator(pot)
    strained = []
    for i, j in VOIGT:
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += 0.5 * sign * h
            eps[j, i] += 0.5 * sign * h
            a = atoms.copy()
            a.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            strained.append(a)
    res = ev([atoms] + strained)
    e = np.array([r["energy"] for r in res[1:]]).reshape(6, 2)
    s_fd = (e[:, 0] - e[:, 1]) / (2 * h) / atoms.get_volume()
    s = res[0]["stress"]
    s_voigt = np.array([s[i, j] for i, j in VOIGT])
    assert_close(f"{ev.name} stress", "σ not symmetric (eV/Å³)", s, s.T, atol=1e-12)
    err = np.abs(s_fd - s_voigt).max() / np.abs(s_voigt).max()
    assert err < tol, (f"{ev.name} stress: σ differs from finite differences by {err:.2e} "
                       f"(relative, tolerance {tol:g})\n{s_voigt}\n{s_fd}")


def check_o3_equivariance(pot, atoms: Atoms, seed: int = 0, atol: float = 1e-9, rtol: float = 1e-10) -> None:
    """E and F under a random rotation combined with inversion, through e3nn-jax's
    ``assert_equivariant``: positions (N, 3) and cell vectors (3, 3) as "1o", E as "0e", F as "1o".
    (σ is covered by ``check_equivariance``.) For E(3) models; skip it for SE(3)-only ones."""
    import e3nn_jax as e3nn
    import jax
    from e3nn_jax.utils import assert_equivariant

    ev = as_evaluator(pot)
    periodic = bool(atoms.pbc.any())

    def energy_forces(positions, *cell):
        a = transformed(atoms, positions=np.asarray(positions.array))
        if periodic:
            a.cell = np.asarray(cell[0].array)
        (res,) = ev([a])
        # One flat array, E then F row by row: assert_equivariant transforms a single IrrepsArray.
        return e3nn.IrrepsArray(f"0e + {len(atoms)}x1o", np.concatenate([[res["energy"]], res["forces"].ravel()]))

    args = [e3nn.IrrepsArray("1o", np.asarray(atoms.positions, np.float64))]
    if periodic:
        args.append(e3nn.IrrepsArray("1o", np.asarray(atoms.cell.array, np.float64)))
    try:
        assert_equivariant(energy_forces, jax.random.PRNGKey(seed), *args, atol=atol, rtol=rtol)
    except AssertionError as err:
        raise AssertionError(f"{ev.name} O(3) equivariance (e3nn assert_equivariant): E or F violate it\n{err}") from None
