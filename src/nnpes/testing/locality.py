"""Extensivity, locality and batching checks: supercells scale, separated fragments add, E and F
vanish smoothly at the cutoff, a structure alone equals it inside a padded batch, and ``predict``
does not recompile within a bucket. Same conventions as ``nnpes.testing.checks``."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from nnpes.testing.checks import assert_close
from nnpes.testing.evaluator import Evaluator, as_evaluator
from nnpes.testing.structures import random_molecule, random_rotation, transformed


def check_extensivity(pot, atoms: Atoms, repeat=(2, 2, 2)) -> None:
    """A periodic supercell: E scales with the number of copies, F repeats, σ is unchanged."""
    ev = as_evaluator(pot)
    copies = int(np.prod(repeat))
    base, sup = ev([atoms, atoms.repeat(repeat)])
    check = f"{ev.name} extensivity"
    assert_close(check, f"E(supercell) != {copies} E (eV)", sup["energy"], copies * base["energy"], 1e-10, 1e-9)
    assert_close(check, "F not repeated (eV/Å)", sup["forces"], np.tile(base["forces"], (copies, 1)), atol=1e-9)
    assert_close(check, "σ changed (eV/Å³)", sup["stress"], base["stress"], atol=1e-9)


def check_separated_add(pot, a: Atoms, b: Atoms) -> None:
    """Two fragments further apart than the cutoff: E(a + b) = E(a) + E(b), forces unchanged."""
    ev = as_evaluator(pot)
    gap = np.linalg.norm(a.positions[:, None] - b.positions[None], axis=-1).min()
    assert gap > ev.pot.cutoff, f"{ev.name} locality: fragments {gap:.2f} Å apart, within the cutoff"
    ra, rb, rab = ev([a, b, a + b])
    assert_close(f"{ev.name} locality", "E(a+b) != E(a) + E(b) (eV)", rab["energy"], ra["energy"] + rb["energy"], 1e-10, 1e-10)
    assert_close(f"{ev.name} locality", "F changed (eV/Å)", rab["forces"], np.concatenate([ra["forces"], rb["forces"]]), atol=1e-10)


def check_cutoff_crossing(pot, path: Callable[[float], Atoms], x_c: float):
    """E and F along ``path(x)`` (Å), where an atom crosses another's cutoff at x = x_c: the jumps
    across x_c vanish at least linearly with the gap, and the crossing step of a fine scan is no
    outlier. Returns (xs, energies (X,), forces (X, N, 3))."""
    ev = as_evaluator(pot)
    deltas = np.geomspace(1e-2, 1e-6, 5)
    fine = x_c + np.linspace(-0.1, 0.1, 81)  # crossing between points 40 and 41: x_c ± 1.25e-3
    fine = np.sort(np.concatenate([fine[fine < x_c], fine[fine > x_c]]))
    xs = np.concatenate([x_c - deltas, x_c + deltas, fine])
    res = ev([path(x) for x in xs])
    e = np.array([r["energy"] for r in res])
    f = np.array([r["forces"] for r in res])
    n = len(deltas)
    jump_e = np.abs(e[n : 2 * n] - e[:n])
    jump_f = np.abs(f[n : 2 * n] - f[:n]).max(axis=(1, 2))
    # Continuity: the jumps across the cutoff vanish (at least linearly) as the gap 2δ shrinks.
    scale_e = np.abs(np.diff(e[2 * n :])).max() / 2.5e-3  # |dE/dx| along the scan
    scale_f = np.abs(np.diff(f[2 * n :], axis=0)).max() / 2.5e-3
    assert np.all(jump_e <= 2 * scale_e * 2 * deltas + 1e-12), f"{ev.name} cutoff: E jumps at the cutoff {jump_e}"
    assert np.all(jump_f <= 2 * scale_f * 2 * deltas + 1e-12), f"{ev.name} cutoff: F jumps at the cutoff {jump_f}"
    # No outlier step where the atom crosses the cutoff on the fine scan.
    steps = np.abs(np.diff(e[2 * n :]))
    k = np.searchsorted(fine, x_c) - 1
    assert steps[k] <= 3 * np.delete(steps, k).max() + 1e-12, \
        f"{ev.name} cutoff: E step at the cutoff {steps[k]:.3e} vs {steps.max():.3e} elsewhere"
    return xs, e, f


def check_cutoff_smoothness(pot, symbols: str = "CO") -> None:
    """A dimer's interaction E and F go to zero continuously as r → r_c; beyond r_c the atoms are
    isolated (F exactly 0, E constant)."""
    ev = as_evaluator(pot)
    rc = ev.pot.cutoff
    xs, e, f = check_cutoff_crossing(ev, lambda r: Atoms(symbols, positions=[[0, 0, 0], [r, 0, 0]]), rc)
    beyond = xs > rc
    assert np.all(f[beyond] == 0.0), f"{ev.name} cutoff: F = {np.abs(f[beyond]).max():.3e} eV/Å beyond the cutoff"
    assert_close(f"{ev.name} cutoff", "E varies beyond the cutoff (eV)", e[beyond], np.full(beyond.sum(), e[beyond][0]), atol=1e-12)
    inside = (xs < rc) & (xs > rc - 0.05)
    assert np.any(np.abs(f[inside]).max(axis=(1, 2)) > 0), f"{ev.name} cutoff: interaction never switched on: check is vacuous"
    close = np.abs(xs - rc) < 1e-5
    f_c, e_c = np.abs(f[close]).max(), np.abs(e[close] - e[beyond][0]).max()
    assert f_c < 1e-6 and e_c < 1e-8, f"{ev.name} cutoff: |F| = {f_c:.3e} eV/Å, |ΔE| = {e_c:.3e} eV within 1e-5 Å of r_c"


def check_padding(pot, structures: Sequence[Atoms]) -> None:
    """Each structure gives the same result through ``Potential.predict`` alone as inside the
    evaluator's padded batch; an ``Evaluator`` passed in must have compiled exactly once."""
    ev = as_evaluator(pot)
    for atoms, ref in zip(structures, ev(structures)):
        alone = ev.pot.predict(atoms)
        check = f"{ev.name} padding"
        assert_close(check, "E alone != in batch (eV)", alone["energy"], ref["energy"], 1e-12, 1e-11)
        assert_close(check, "F alone != in batch (eV/Å)", alone["forces"], ref["forces"], atol=1e-10)
        assert_close(check, "per-atom E alone != in batch (eV)", alone["energies"], ref["energies"], atol=1e-10)
        if atoms.pbc.all():
            assert_close(check, "σ alone != in batch (eV/Å³)", alone["stress"], ref["stress"], atol=1e-10)
        else:
            assert "stress" not in alone, f"{check}: stress returned for a non-periodic structure"
    assert ev.traces == 1, f"{ev.name} padding: battery compiled {ev.traces} times for one shape"


def check_no_recompile(pot, seed: int = 20, n: int = 4) -> None:
    """``predict`` on a second batch with the same atom and edge counts (rotated, shifted, species
    shuffled) reuses the compiled function, and gives different energies."""
    pot = pot.pot if isinstance(pot, Evaluator) else pot
    name = pot.config.name
    rng = np.random.default_rng(seed)
    first = [random_molecule(rng, elements=pot.elements) for _ in range(n)]
    second = []
    for a in first:
        b = transformed(a, rot=random_rotation(int(rng.integers(1000))), shift=rng.normal(size=3))
        b.numbers = a.numbers[rng.permutation(len(a))]
        second.append(b)
    from nnpes.graph import atoms_to_graph

    edges = [[len(atoms_to_graph(a, pot.cutoff).senders) for a in s] for s in (first, second)]
    assert edges[0] == edges[1], f"{name} no recompile: the two batches differ in edge counts {edges}"
    r1 = pot.predict(first, compute_stress=False)
    before = pot.n_compiles
    r2 = pot.predict(second, compute_stress=False)
    assert pot.n_compiles == before, f"{name} no recompile: predicting a second batch of the same bucket recompiled"
    assert not np.allclose([r["energy"] for r in r1], [r["energy"] for r in r2]), \
        f"{name} no recompile: both batches gave the same energies (check is vacuous)"
