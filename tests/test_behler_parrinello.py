"""Behler–Parrinello model: symmetry functions against a brute-force triplet loop, invariance,
forces against finite differences (float64), calibration, padding. Each jitted function compiles
once: every model call below uses the same padded shape PAD."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from nnpes import keys
from nnpes.models.inputs import model_inputs
from nnpes.graph import batch, pad_graph
from nnpes.graph import atoms_to_graph
from nnpes.models import get_model
from nnpes.config.model import parse_model_config
from nnpes.models.symmetry_functions import ACSFSpec, acsf, cutoff_function
from nnpes.graph.neighbors import neighbor_list
from nnpes.potential import Potential, energy_forces_stress, load_potential, make_module, species_table
from nnpes.config.schema import ConfigError

CUTOFF = 4.0  # Å
ELEMENTS = ["H", "C", "O"]
PAD = (40, 400, 4)  # n_node, n_edge, n_graph for every model call
HP = {"hidden": [16, 16], "n_radial": 5, "angular_etas": [0.02, 0.3], "zetas": [1, 2, 4]}


# ---- descriptors against a brute-force triplet loop -----------------------------------------


def brute_force_acsf(atoms: Atoms, spec: ACSFSpec, numbers: list[int]) -> np.ndarray:
    """Direct transcription of the G2/G5 definitions with explicit (i, j, k) loops over the
    neighbour list (periodic images are separate neighbours)."""
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, spec.cutoff)
    vec = atoms.positions[nl.senders] - atoms.positions[nl.receivers] + nl.shifts @ atoms.cell.array
    sp = np.array([numbers.index(z) for z in atoms.numbers])
    rc = spec.cutoff

    def fc(r):
        x = r / rc
        return 1 - 10 * x**3 + 15 * x**4 - 6 * x**5 if x < 1 else 0.0

    n_el = spec.n_species
    pairs = [(a, b) for a in range(n_el) for b in range(a, n_el)]
    out = []
    for i in range(len(atoms)):
        edges = np.flatnonzero(nl.receivers == i)
        g2 = np.zeros((n_el, len(spec.radial_shifts)))
        for e in edges:
            r = np.linalg.norm(vec[e])
            for s, rs in enumerate(spec.radial_shifts):
                g2[sp[nl.senders[e]], s] += math.exp(-spec.radial_eta * (r - rs) ** 2) * fc(r)
        g5 = np.zeros((len(pairs), len(spec.angular_etas), len(spec.zetas), len(spec.lambdas)))
        for a, ej in enumerate(edges):
            for ek in edges[a + 1 :]:
                rj, rk = np.linalg.norm(vec[ej]), np.linalg.norm(vec[ek])
                cos = vec[ej] @ vec[ek] / (rj * rk)
                p = pairs.index(tuple(sorted((sp[nl.senders[ej]], sp[nl.senders[ek]]))))
                for h, eta in enumerate(spec.angular_etas):
                    radial = math.exp(-eta * (rj**2 + rk**2)) * fc(rj) * fc(rk)
                    for z, zeta in enumerate(spec.zetas):
                        for m, lam in enumerate(spec.lambdas):
                            g5[p, h, z, m] += 2 ** (1 - zeta) * (1 + lam * cos) ** zeta * radial
        out.append(np.concatenate([g2.ravel(), g5.ravel()]))
    return np.array(out)


def padded_acsf(atoms: Atoms, spec: ACSFSpec, numbers: list[int], pad_nodes: int, pad_edges: int):
    g = pad_graph(atoms_to_graph(atoms, spec.cutoff), pad_nodes, pad_edges, 2)
    edge_mask = np.asarray(jraph.get_edge_padding_mask(g))
    pos, cell = g.nodes[keys.POSITIONS], g.globals[keys.CELL][0]
    vec = pos[g.senders] - pos[g.receivers] + g.edges[keys.SHIFTS] @ cell
    vec[~edge_mask] = 0.0  # the padding convention models see
    table = {z: k for k, z in enumerate(numbers)} | {0: 0}
    species = np.array([table[z] for z in g.nodes[keys.NUMBERS]])
    return np.asarray(acsf(spec, jnp.asarray(vec), jnp.asarray(species), g.senders, g.receivers, jnp.asarray(edge_mask)))


@pytest.mark.parametrize(
    "atoms, elements",
    [
        (molecule("CH3CH2OH"), ["H", "C", "O"]),
        # 2-atom cell smaller than the cutoff: each atom sees several images of itself and its partner.
        (bulk("SiC", "zincblende", a=4.36), ["C", "Si"]),
    ],
    ids=["ethanol", "periodic_SiC"],
)
def test_acsf_matches_brute_force_triplets_and_padding_is_zero(atoms, elements):
    atoms = atoms.copy()
    atoms.rattle(0.05, seed=1)
    numbers = [Atoms(s).numbers[0] for s in elements]
    spec = ACSFSpec(len(elements), CUTOFF, (0.8, 1.6, 2.4, 3.2), 1.1, (0.0, 0.05, 0.4), (1, 2, 3, 4), (-1.0, 1.0))
    ref = brute_force_acsf(atoms, spec, numbers)
    n = len(atoms)
    n_edges = len(neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF).senders)
    got = padded_acsf(atoms, spec, numbers, n + 3, n_edges + 17)
    assert got.shape == (n + 3, spec.size)
    assert np.abs(ref).max() > 0.1  # the comparison is not between zeros
    np.testing.assert_allclose(got[:n], ref, rtol=1e-10, atol=1e-12)
    assert np.all(got[n:] == 0.0)


def test_cutoff_function_is_c2_at_the_cutoff():
    rc = 3.0
    f = lambda r: cutoff_function(r, rc)  # noqa: E731
    df = jax.grad(f)
    f, df, d2f = jax.jit(f), jax.jit(df), jax.jit(jax.grad(df))
    for r in [rc - 1e-7, rc, rc + 0.1]:
        assert abs(float(f(r))) < 1e-12 and abs(float(df(r))) < 1e-9 and abs(float(d2f(r))) < 1e-5
    assert float(f(0.0)) == 1.0 and float(f(1.5)) == pytest.approx(0.5)


# ---- the model ---------------------------------------------------------------------------------


def ethanol_frames(n: int, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    base = molecule("CH3CH2OH")
    frames = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.08, a.positions.shape)
        frames.append(a)
    return frames


def to_device(graph):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else jnp.asarray(x),
        graph,
    )


def padded(atoms_list) -> jraph.GraphsTuple:
    return pad_graph(batch([atoms_to_graph(a, CUTOFF) for a in atoms_list]), *PAD)


@pytest.fixture(scope="module")
def cfg():
    return parse_model_config({"name": "behler_parrinello", "elements": ELEMENTS, "cutoff": CUTOFF, "dtype": "float64", **HP})


@pytest.fixture(scope="module")
def model(cfg):
    """float64 model calibrated on rattled ethanol, and one jitted function at shape PAD returning
    energy/forces (``nnpes.potential.energy_forces_stress``) plus the normalised descriptors that
    the model's call path sows (key "x")."""
    module = make_module(cfg)
    table = species_table(cfg)
    train = ethanol_frames(6, seed=1)
    graphs = [padded(train[:3]), padded(train[3:])]
    # Jitted init: same variables as nnpes.potential.init_params, a third of its (eager) compile time.
    init = jax.jit(lambda key, g: module.init(key, model_inputs(g, table)))
    variables = init(jax.random.PRNGKey(3), to_device(graphs[0]))
    variables = get_model("behler_parrinello").calibrate(module, variables, graphs)

    @jax.jit
    def evaluate(v, g):
        out = energy_forces_stress(module, table, v, g, compute_stress=False)
        _, state = module.apply(v, model_inputs(g, table), mutable=["intermediates"])
        (out["x"],) = state["intermediates"]["inner"]["normalised_descriptors"]
        return out

    return module, variables, evaluate, train


def test_calibration_normalises_the_descriptors_it_saw(model):
    module, variables, evaluate, train = model
    xs, ss = [], []
    for chunk in (train[:3], train[3:]):
        g = padded(chunk)
        mask = np.asarray(jraph.get_node_padding_mask(g))
        xs.append(np.asarray(evaluate(variables, to_device(g))["x"])[mask])
        ss.append(np.array([ELEMENTS.index(sym) for a in chunk for sym in a.get_chemical_symbols()]))
    x, s = np.concatenate(xs), np.concatenate(ss)
    const = variables["constants"]["inner"]
    assert const["mean"].dtype == jnp.float64 and np.any(np.asarray(const["std"]) != 1.0)
    for el in range(len(ELEMENTS)):
        xe = x[s == el]
        varying = np.asarray(const["std"][el]) != 1.0
        assert varying.sum() > 10
        np.testing.assert_allclose(xe.mean(axis=0), 0.0, atol=1e-9)
        np.testing.assert_allclose(xe[:, varying].std(axis=0), 1.0, rtol=1e-9)


def test_energy_invariant_under_rotation_translation_permutation(model):
    module, variables, efs, train = model
    a = train[0]
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    moved = a.copy()
    moved.positions = a.positions @ rot.T + np.array([1.5, -0.7, 3.0])
    perm = np.random.default_rng(0).permutation(len(a))
    shuffled = a[perm]
    out = efs(variables, to_device(padded([a, moved, shuffled])))
    e = np.asarray(out["energy"])
    assert abs(e[0]) > 1e-3
    np.testing.assert_allclose(e[1:3], e[0], rtol=0, atol=1e-10)
    f = np.asarray(out["forces"])
    n = len(a)
    assert np.abs(f[:n]).max() > 1e-3
    np.testing.assert_allclose(f[n : 2 * n], f[:n] @ rot.T, atol=1e-9)
    np.testing.assert_allclose(f[2 * n : 3 * n], f[:n][perm], atol=1e-9)


def test_forces_are_minus_gradient_by_finite_differences(model):
    module, variables, efs, train = model
    a = train[2]
    rng = np.random.default_rng(7)
    directions = [rng.normal(size=(len(a), 3)) for _ in range(3)]
    h = 1e-4
    structures = [a]
    for d in directions:
        for sign in (1, -1):
            b = a.copy()
            b.positions = a.positions + sign * h * d
            structures.append(b)
    energies, forces = [], None
    for k in range(0, len(structures), PAD[2] - 1):
        out = efs(variables, to_device(padded(structures[k : k + PAD[2] - 1])))
        forces = np.asarray(out["forces"])[: len(a)] if forces is None else forces
        energies += list(np.asarray(out["energy"])[: len(structures[k : k + PAD[2] - 1])])
    for i, d in enumerate(directions):
        numeric = -(energies[1 + 2 * i] - energies[2 + 2 * i]) / (2 * h)
        analytic = float(np.sum(forces * d))
        assert abs(analytic) > 1e-3
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-8)


def test_padding_contributes_nothing_and_gradients_stay_finite(model):
    module, variables, efs, train = model
    a, b = train[0], train[1]
    alone = efs(variables, to_device(padded([a])))
    pair = efs(variables, to_device(padded([b, a])))
    n = len(a)
    assert float(alone["energy"][0]) == pytest.approx(float(pair["energy"][1]), abs=1e-12)
    np.testing.assert_allclose(np.asarray(alone["forces"][:n]), np.asarray(pair["forces"][n : 2 * n]), atol=1e-12)
    # Padding atoms (everything after the real ones) have zero energy and force.
    assert np.all(np.asarray(alone["energies"][n:]) == 0.0)
    assert np.all(np.asarray(alone["forces"][n:]) == 0.0)
    assert np.all(np.asarray(alone["energy"][1:]) == 0.0)

    # Parameter gradients (what training sees) are finite despite zero-length padding edges.
    g = to_device(padded([a]))
    loss = lambda p: jnp.sum(efs({**variables, "params": p}, g)["forces"] ** 2)  # noqa: E731
    grads = jax.grad(loss)(variables["params"])
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    assert any(np.abs(np.asarray(x)).max() > 0 for x in leaves)


def test_calibrate_rejects_unknown_elements_and_config_rejects_bad_zeta(model):
    module, variables, _, _ = model
    bad = Atoms("HN", positions=[[0, 0, 0], [0, 0, 1.0]])
    with pytest.raises(ValueError, match=r"graph 0 has atomic numbers \[7\]"):
        get_model("behler_parrinello").calibrate(module, variables, [pad_graph(atoms_to_graph(bad, CUTOFF), 3, 4, 2)])
    with pytest.raises(ConfigError, match="zetas"):
        parse_model_config({"name": "behler_parrinello", "elements": ELEMENTS, "zetas": [0, 2]})
    with pytest.raises(ConfigError, match="radial_r_min"):
        cfg = parse_model_config({"name": "behler_parrinello", "elements": ELEMENTS, "cutoff": 2.0, "radial_r_min": 2.5})
        make_module(cfg)


def test_save_load_keeps_the_calibration(model, cfg, tmp_path):
    module, variables, _, _ = model
    Potential(cfg, variables, module).save(tmp_path / "bp")
    loaded = load_potential(tmp_path / "bp")
    assert loaded.config.hparams == cfg.hparams
    for name in ("mean", "std"):
        np.testing.assert_array_equal(np.asarray(loaded.params["constants"]["inner"][name]), np.asarray(variables["constants"]["inner"][name]))
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), loaded.params, variables)
    assert all(jax.tree_util.tree_leaves(same))
