"""The physics battery every registered model inherits (names starting with "_" are skipped).

A new model gets these tests by registering; give it small hyperparameters in ``HPARAMS`` if its
defaults are slow. Everything runs in float64 on random molecules and random periodic cells
(including cells smaller than the cutoff). Each test sends its structures through one jitted
energy/forces/stress call padded to one fixed shape, so each model compiles once here.

``NNPES_BATTERY_MODELS=a,b`` runs the battery on the named models only (e.g. ``_toy`` when
developing it; the private test model lives in ``tests/_toy_model.py``).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from scipy.spatial.transform import Rotation

import _toy_model  # noqa: F401  (registers "_toy")
from nnpes.graph import batch, pad_graph
from nnpes.graph import atoms_to_graph
from nnpes.models import MODELS, _import_builtin
from nnpes.graph import to_device
from nnpes.potential import build_potential

ELEMENTS = ["H", "C", "O"]
CUTOFF = 3.0  # Å
# Small hyperparameters per model so the battery stays cheap; a model missing here uses its defaults.
HPARAMS = {
    "nequip": {"num_layers": 2, "features": 8, "num_bessel": 6, "radial_mlp_width": 16},
    "behler_parrinello": {"hidden": [16], "n_radial": 4, "angular_etas": [0.05], "zetas": [1, 2]},
}
# One padded shape for every call: n_node, n_edge, n_graph (larger inputs are split into chunks).
PAD = (256, 4096, 40)


def battery_models() -> list[str]:
    _import_builtin()
    wanted = os.environ.get("NNPES_BATTERY_MODELS")
    if wanted:
        return [m.strip() for m in wanted.split(",") if m.strip()]
    return sorted(name for name in MODELS if not name.startswith("_"))


# ---- random structures -----------------------------------------------------------------------


def random_molecule(rng, n=6, box=2.6, min_dist=0.9) -> Atoms:
    while True:
        pos = rng.uniform(0, box, (n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
        if d.min() > min_dist:
            break
    symbols = [ELEMENTS[k % len(ELEMENTS)] for k in range(n)]
    rng.shuffle(symbols)
    return Atoms(symbols, positions=pos, pbc=False)


def random_cell(rng, n=2, length=2.6, min_dist=0.9) -> Atoms:
    """Triclinic periodic cell; with length < CUTOFF an atom sees several images of itself."""
    cell = length * np.eye(3) + rng.uniform(-0.3, 0.3, (3, 3))
    while True:
        atoms = Atoms(
            [ELEMENTS[k % len(ELEMENTS)] for k in range(n)], scaled_positions=rng.uniform(0, 1, (n, 3)),
            cell=cell, pbc=True,
        )
        if min_image_distance(atoms) > min_dist:
            return atoms


def min_image_distance(atoms: Atoms) -> float:
    from nnpes.graph.neighbors import neighbor_list

    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF)
    v = atoms.positions[nl.senders] - atoms.positions[nl.receivers] + nl.shifts @ atoms.cell.array
    return float(np.linalg.norm(v, axis=1).min()) if len(v) else np.inf


def make_structure(kind: str, seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    if kind == "molecule":
        return random_molecule(rng)
    if kind == "small_cell":
        return random_cell(rng, n=2, length=2.6)
    if kind == "cell":
        return random_cell(rng, n=5, length=4.0)
    raise ValueError(kind)


KINDS = ["molecule", "small_cell", "cell"]
PERIODIC_KINDS = ["small_cell", "cell"]


def labelled_dataset(seed=123, n=6) -> list[Atoms]:
    """Random structures labelled by ase's EMT (it has H, C, O): feeds E0/scale and calibrate hooks."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = random_molecule(rng, n=5) if k % 2 else random_cell(rng, n=3, length=3.2)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        out.append(atoms)
    return out


# ---- one compiled evaluator per model --------------------------------------------------------


class Evaluator:
    """Energy (G,), forces, per-atom energies and stress of a list of structures, through one jitted
    call per chunk at the fixed shape PAD."""

    def __init__(self, pot):
        self.pot = pot
        self.traces = 0

        def efs(variables, graph):
            self.traces += 1
            return pot.energy_forces_stress(variables, graph, True)

        self.fn = jax.jit(efs)

    def __call__(self, atoms_list: list[Atoms]) -> list[dict]:
        graphs = [atoms_to_graph(a, CUTOFF) for a in atoms_list]
        out, chunk = [], []
        for g in graphs + [None]:
            if g is not None:
                nodes = sum(int(c.n_node[0]) for c in chunk) + int(g.n_node[0])
                edges = sum(int(c.n_edge[0]) for c in chunk) + int(g.n_edge[0])
                if nodes < PAD[0] and edges <= PAD[1] and len(chunk) + 1 < PAD[2]:
                    chunk.append(g)
                    continue
            assert chunk, f"one structure exceeds the battery's padded shape {PAD}"
            out += self._run(chunk)
            chunk = [g] if g is not None else []
        return out

    def _run(self, chunk):
        padded = to_device(pad_graph(batch(chunk), *PAD), self.pot.dtype)
        res = jax.tree_util.tree_map(np.asarray, self.fn(self.pot.params, padded))
        results, node0 = [], 0
        for g, graph in enumerate(chunk):
            n = int(graph.n_node[0])
            sl = slice(node0, node0 + n)
            results.append({
                "energy": float(res["energy"][g]), "forces": res["forces"][sl], "energies": res["energies"][sl],
                "stress": res["stress"][g],
            })
            node0 += n
        return results


@pytest.fixture(scope="module", params=battery_models())
def model(request):
    name = request.param
    config = {"name": name, "elements": ELEMENTS, "cutoff": CUTOFF, "dtype": "float64", **HPARAMS.get(name, {})}
    pot = build_potential(config, seed=1, dataset=labelled_dataset())
    ev = Evaluator(pot)
    # A model whose fresh output is (nearly) constant would pass every test trivially: perturb it.
    probe = ev([make_structure("molecule", 7)])[0]
    if np.abs(probe["forces"]).max() < 1e-4:
        leaves, tree = jax.tree_util.tree_flatten(pot.params["params"])
        keys_ = jax.random.split(jax.random.PRNGKey(0), len(leaves))
        leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys_, leaves)]
        pot = pot.replace({**pot.params, "params": jax.tree_util.tree_unflatten(tree, leaves)})
        ev = Evaluator(pot)
        probe = ev([make_structure("molecule", 7)])[0]
    assert np.abs(probe["forces"]).max() > 1e-4, f"{name}: forces are ~0 even after perturbing parameters"
    return name, pot, ev


def random_rotation(seed) -> np.ndarray:
    return Rotation.random(random_state=seed).as_matrix()


def transformed(atoms: Atoms, rot=None, shift=None, positions=None) -> Atoms:
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


def scale_of(results) -> float:
    return max(np.abs(r["forces"]).max() for r in results)


# ---- symmetry --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rotation_translation(model, kind):
    name, pot, ev = model
    atoms = make_structure(kind, 11)
    rots = [random_rotation(s) for s in (1, 2)]
    shift = np.array([0.37, -1.21, 2.9])
    base, r1, r2, tr = ev([atoms, transformed(atoms, rot=rots[0]), transformed(atoms, rot=rots[1]), transformed(atoms, shift=shift)])
    assert abs(base["energy"]) + scale_of([base]) > 1e-6
    for res, rot in ((r1, rots[0]), (r2, rots[1])):
        np.testing.assert_allclose(res["energy"], base["energy"], rtol=1e-10, atol=1e-10, err_msg=f"{name}: E not rotation invariant")
        np.testing.assert_allclose(res["forces"], base["forces"] @ rot.T, atol=1e-9, err_msg=f"{name}: F not rotation equivariant")
        if kind in PERIODIC_KINDS:
            np.testing.assert_allclose(res["stress"], rot @ base["stress"] @ rot.T, atol=1e-9, err_msg=f"{name}: stress not equivariant")
    np.testing.assert_allclose(tr["energy"], base["energy"], rtol=1e-10, atol=1e-10, err_msg=f"{name}: E not translation invariant")
    np.testing.assert_allclose(tr["forces"], base["forces"], atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_parity(model, kind):
    """E(3) models: E(−R) = E(R), F(−R) = −F(R). (A lattice is inversion symmetric, so a cell keeps
    its vectors while the atoms are inverted.)"""
    name, pot, ev = model
    if getattr(pot.config.hparams, "parity", True) is False:
        pytest.skip(f"{name} is configured SE(3)-only (parity: false)")
    atoms = make_structure(kind, 12)
    base, inv = ev([atoms, transformed(atoms, positions=-atoms.positions)])
    np.testing.assert_allclose(inv["energy"], base["energy"], rtol=1e-10, atol=1e-10, err_msg=f"{name}: E not parity invariant")
    np.testing.assert_allclose(inv["forces"], -base["forces"], atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_periodic_images_and_permutation(model, kind):
    """Permuting atoms permutes forces and per-atom energies; in a cell, moving an atom by a
    lattice vector changes nothing."""
    name, pot, ev = model
    atoms = make_structure(kind, 13)
    perm = np.random.default_rng(0).permutation(len(atoms))
    permuted = atoms[perm]
    structures = [atoms, permuted]
    if kind in PERIODIC_KINDS:
        wrapped = atoms.copy()
        wrapped.positions[0] += np.array([1, -2, 1]) @ atoms.cell.array
        structures.append(wrapped)
    res = ev(structures)
    np.testing.assert_allclose(res[1]["energy"], res[0]["energy"], rtol=1e-10, atol=1e-10, err_msg=f"{name}: E not permutation invariant")
    np.testing.assert_allclose(res[1]["forces"], res[0]["forces"][perm], atol=1e-9)
    np.testing.assert_allclose(res[1]["energies"], res[0]["energies"][perm], atol=1e-9)
    if kind in PERIODIC_KINDS:
        np.testing.assert_allclose(res[2]["energy"], res[0]["energy"], rtol=1e-10, atol=1e-10, err_msg=f"{name}: lattice translation changed E")
        np.testing.assert_allclose(res[2]["forces"], res[0]["forces"], atol=1e-9)
        np.testing.assert_allclose(res[2]["stress"], res[0]["stress"], atol=1e-9)


# ---- derivatives -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_forces_are_minus_gradient(model, kind):
    """F = −∂E/∂R against central finite differences of E, every component (relative error < 1e-6)."""
    name, pot, ev = model
    atoms = make_structure(kind, 14)
    h = 1e-5
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
    assert err < 1e-6, f"{name} {kind}: forces differ from −dE/dR by {err:.2e} (relative)\n{f}\n{f_fd}"


@pytest.mark.parametrize("kind", PERIODIC_KINDS)
def test_stress_is_strain_derivative(model, kind):
    """σ = (1/V) ∂E/∂ε (ase sign) against finite differences of E under symmetric strain of cell
    and positions."""
    name, pot, ev = model
    atoms = make_structure(kind, 15)
    h = 1e-5
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    strained = []
    for i, j in pairs:
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += 0.5 * sign * h
            eps[j, i] += 0.5 * sign * h
            a = atoms.copy()
            a.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            strained.append(a)
    res = ev([atoms] + strained)
    e = np.array([r["energy"] for r in res[1:]]).reshape(6, 2)
    s_fd_voigt = (e[:, 0] - e[:, 1]) / (2 * h) / atoms.get_volume()
    s = res[0]["stress"]
    s_voigt = np.array([s[i, j] for i, j in pairs])
    np.testing.assert_allclose(s, s.T, atol=1e-12, err_msg=f"{name}: stress not symmetric")
    err = np.abs(s_fd_voigt - s_voigt).max() / np.abs(s_voigt).max()
    assert err < 1e-6, f"{name} {kind}: stress differs from finite differences by {err:.2e}\n{s_voigt}\n{s_fd_voigt}"


# ---- extensivity and locality ----------------------------------------------------------------


@pytest.mark.parametrize("kind", PERIODIC_KINDS)
def test_supercell_is_extensive(model, kind):
    name, pot, ev = model
    atoms = make_structure(kind, 16)
    big = atoms.repeat((2, 2, 2))
    base, sup = ev([atoms, big])
    np.testing.assert_allclose(sup["energy"], 8 * base["energy"], rtol=1e-10, atol=1e-9, err_msg=f"{name}: E(2x2x2) != 8 E")
    np.testing.assert_allclose(sup["forces"], np.tile(base["forces"], (8, 1)), atol=1e-9)
    np.testing.assert_allclose(sup["stress"], base["stress"], atol=1e-9)


def test_separated_molecules_add(model):
    """Two molecules further apart than the cutoff: E = E_A + E_B, forces unchanged."""
    name, pot, ev = model
    a, b = make_structure("molecule", 17), make_structure("molecule", 18)
    b.positions += np.array([CUTOFF + 2.7 + 0.5, 0.3, -0.2])  # molecules span ≤ 2.6·√3 Å boxes
    gap = np.linalg.norm(a.positions[:, None] - b.positions[None], axis=-1).min()
    assert gap > CUTOFF
    ra, rb, rab = ev([a, b, a + b])
    np.testing.assert_allclose(rab["energy"], ra["energy"] + rb["energy"], rtol=1e-10, atol=1e-10, err_msg=f"{name}: not local")
    np.testing.assert_allclose(rab["forces"], np.concatenate([ra["forces"], rb["forces"]]), atol=1e-10)


def _crossing(model, path_fn, x_c):
    """E and F along ``path_fn(x)``; an atom crosses another's cutoff at x = x_c."""
    name, pot, ev = model
    deltas = np.geomspace(1e-2, 1e-6, 5)
    fine = x_c + np.linspace(-0.1, 0.1, 81)  # crossing between points 40 and 41: x_c ± 1.25e-3
    fine = np.sort(np.concatenate([fine[fine < x_c], fine[fine > x_c]]))
    xs = np.concatenate([x_c - deltas, x_c + deltas, fine])
    res = ev([path_fn(x) for x in xs])
    e = np.array([r["energy"] for r in res])
    f = np.array([r["forces"] for r in res])
    n = len(deltas)
    jump_e = np.abs(e[n : 2 * n] - e[:n])
    jump_f = np.abs(f[n : 2 * n] - f[:n]).max(axis=(1, 2))
    # Continuity: the jumps across the cutoff vanish (at least linearly) as the gap 2δ shrinks.
    scale_e = np.abs(np.diff(e[2 * n :])).max() / 2.5e-3  # |dE/dx| along the scan
    scale_f = np.abs(np.diff(f[2 * n :], axis=0)).max() / 2.5e-3
    assert np.all(jump_e <= 2 * scale_e * 2 * deltas + 1e-12), f"{name}: E jumps at the cutoff {jump_e}"
    assert np.all(jump_f <= 2 * scale_f * 2 * deltas + 1e-12), f"{name}: F jumps at the cutoff {jump_f}"
    # No outlier step where the atom crosses the cutoff on the fine scan.
    fe = e[2 * n :]
    steps = np.abs(np.diff(fe))
    k = np.searchsorted(fine, x_c) - 1
    assert steps[k] <= 3 * np.delete(steps, k).max() + 1e-12, f"{name}: E step at the cutoff {steps[k]} vs {steps.max()}"
    return xs, e, f


def test_dimer_vanishes_smoothly_at_cutoff(model):
    """A dimer's interaction energy and forces go to zero continuously as r → r_c; beyond r_c the
    atoms are isolated (forces exactly zero)."""
    xs, e, f = _crossing(model, lambda r: Atoms("CO", positions=[[0, 0, 0], [r, 0, 0]]), CUTOFF)
    beyond = xs > CUTOFF
    assert np.all(f[beyond] == 0.0)
    np.testing.assert_allclose(e[beyond], e[beyond][0], rtol=0, atol=1e-12)
    inside = (xs < CUTOFF) & (xs > CUTOFF - 0.05)
    assert np.any(np.abs(f[inside]).max(axis=(1, 2)) > 0), "interaction never switched on: test is vacuous"
    close = np.abs(xs - CUTOFF) < 1e-5
    assert np.abs(f[close]).max() < 1e-6 and np.abs(e[close] - e[beyond][0]).max() < 1e-8


def test_atom_crossing_cutoff_in_a_molecule(model):
    """Three atoms: O moves along x and leaves H's cutoff while staying inside C's (many-body case)."""
    y = 1.5
    x_c = np.sqrt(CUTOFF**2 - y**2)

    def path(x):
        return Atoms("HCO", positions=[[0, 0, 0], [1.5, 0, 0], [x, y, 0.0]])

    _crossing(model, path, x_c)


# ---- batching and compilation ----------------------------------------------------------------


def test_alone_equals_in_padded_batch(model):
    """A structure gives the same result through ``predict`` alone as inside a padded batch."""
    name, pot, ev = model
    structures = [make_structure(k, 19) for k in KINDS]
    in_batch = ev(structures)
    for atoms, ref in zip(structures, in_batch):
        alone = pot.predict(atoms)
        np.testing.assert_allclose(alone["energy"], ref["energy"], rtol=1e-12, atol=1e-11, err_msg=name)
        np.testing.assert_allclose(alone["forces"], ref["forces"], atol=1e-10)
        np.testing.assert_allclose(alone["energies"], ref["energies"], atol=1e-10)
        if atoms.pbc.all():
            np.testing.assert_allclose(alone["stress"], ref["stress"], atol=1e-10)
        else:
            assert "stress" not in alone
    assert ev.traces == 1, f"{name}: battery compiled {ev.traces} times for one shape"


def test_predict_bucket_does_not_recompile(model):
    name, pot, ev = model
    rng = np.random.default_rng(20)
    first = [random_molecule(rng) for _ in range(4)]
    second = []
    for a in first:  # same atom and edge counts, different geometry
        b = transformed(a, rot=random_rotation(int(rng.integers(1000))), shift=rng.normal(size=3))
        b.numbers = a.numbers[rng.permutation(len(a))]
        second.append(b)
    assert [len(atoms_to_graph(a, CUTOFF).senders) for a in first] == [len(atoms_to_graph(b, CUTOFF).senders) for b in second]
    r1 = pot.predict(first, compute_stress=False)
    before = pot.n_compiles
    r2 = pot.predict(second, compute_stress=False)
    assert pot.n_compiles == before, f"{name}: predicting a second batch of the same bucket recompiled"
    assert not np.allclose([r["energy"] for r in r1], [r["energy"] for r in r2])
