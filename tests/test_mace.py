"""MACE: the symmetric contraction, the physics battery, the config template and every front end
(predict, save/load, ASE calculator with stress, MD functions, committee, training).

Tiny models (4 channels, max_ell 2) so each configuration compiles in seconds."""

import csv
import dataclasses

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from ase.build import bulk

from nnpes import testing
from nnpes.config import template
from nnpes.config.model import parse_model_config
from nnpes.config.schema import ConfigError
from nnpes.models.linear import ElementLinear
from nnpes.models.mace import MACEHParams
from nnpes.models import mace as mace_module
from nnpes.potential import compiled
from nnpes.models.mace_ops import coupling, edge_messages, edge_product, symmetric_contraction, to_e3nn_layout
from nnpes.potential import build_potential, load_potential
from nnpes.testing import make_structure

SMALL = {"num_channels": 4, "max_ell": 2, "correlation": 3, "radial_mlp": [8], "num_bessel": 4, "mlp_irreps": "4x0e"}
A_IRREPS, B_IRREPS = "0e+1o+2e", "0e+1o"


# ---- the symmetric contraction ---------------------------------------------------------------


def _contract(a, order, seed=0):
    """B (N, C, D) of one correlation order with random per-node weights; a (N, C, d) array."""
    cp = coupling(A_IRREPS, B_IRREPS, order)
    w = jax.random.normal(jax.random.PRNGKey(seed), (a.shape[0], cp.coefficients.shape[1], a.shape[1]), a.dtype)
    return symmetric_contraction(a, [w], [cp])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_contraction_rotates_as_its_irreps_and_is_homogeneous(order):
    """B(D(g) A) = D(g) B(A) for rotations with and without inversion; B(tA) = t^ν B(A); B(0) = 0."""
    a = jax.random.normal(jax.random.PRNGKey(order), (3, 2, e3nn.Irreps(A_IRREPS).dim), jnp.float64)
    fn = lambda x: e3nn.IrrepsArray(B_IRREPS, _contract(x.array, order))  # noqa: E731
    x = e3nn.IrrepsArray(A_IRREPS, a)
    b = fn(x).array
    assert np.abs(b).max() > 1e-3
    for sign in (1.0, -1.0):
        rot = sign * e3nn.rand_matrix(jax.random.PRNGKey(10 + order), (), jnp.float64)
        np.testing.assert_allclose(fn(x.transform_by_matrix(rot)).array, fn(x).transform_by_matrix(rot).array, atol=1e-12)
    e3nn.utils.assert_equivariant(fn, jax.random.PRNGKey(0), x, atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(_contract(2.0 * a, order), 2.0**order * b, rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(_contract(jnp.zeros_like(a), order)) == 0.0)  # padding nodes: exactly zero


def test_coupling_is_cached_and_reduces_a_vector_square_to_its_norm():
    """ν = 2 of one vector onto 0e: the only invariant is |A|² (one path, equal weights)."""
    assert coupling("1o", "0e", 2) is coupling("1o", "0e", 2)
    cp = coupling("1o", "0e", 2)
    assert cp.coefficients.shape == (3, 1, 1)  # monomials A_x², A_y², A_z²; cross terms vanish
    c = cp.coefficients[:, 0, 0]
    np.testing.assert_allclose(c, c[0])
    a = np.array([[[1.0, -2.0, 0.5]]])
    b = symmetric_contraction(jnp.asarray(a), [jnp.ones((1, 1, 1))], [cp])
    np.testing.assert_allclose(b[0, 0, 0], c[0] * np.sum(a**2), rtol=1e-12)


def test_contraction_in_node_blocks_equals_the_dense_coupling_sum():
    """All orders at once, in blocks of 2 nodes (with a padded last block), against the plain
    Σ_ν Σ_p,q C^ν_pq A^p W_q of the couplings."""
    n, c = 5, 3
    a = jax.random.normal(jax.random.PRNGKey(1), (n, c, e3nn.Irreps(A_IRREPS).dim), jnp.float64)
    cps = [coupling(A_IRREPS, B_IRREPS, nu) for nu in (1, 2, 3)]
    ws = [jax.random.normal(jax.random.PRNGKey(nu), (n, cp.coefficients.shape[1], c), jnp.float64) for nu, cp in enumerate(cps)]
    reference = sum(
        jnp.einsum("pnk,pqD,nqk->nkD", jnp.prod(jnp.moveaxis(a, -1, 0)[cp.monomials], axis=1), cp.coefficients, w)
        for cp, w in zip(cps, ws)
    )
    for block in (2, n):
        np.testing.assert_allclose(symmetric_contraction(a, ws, cps, node_block=block), reference, rtol=1e-12, atol=1e-12)


def test_contraction_second_derivative_matches_finite_differences():
    """A training step differentiates forces (∂E/∂A) once more, with respect to the weights: the
    gradient of a force-like loss through the rematerialised blocks equals central differences."""
    n, c = 5, 2
    cps = [coupling(A_IRREPS, B_IRREPS, nu) for nu in (1, 2, 3)]
    a = jax.random.normal(jax.random.PRNGKey(3), (n, c, e3nn.Irreps(A_IRREPS).dim), jnp.float64)
    ws = [jax.random.normal(jax.random.PRNGKey(nu), (n, cp.coefficients.shape[1], c), jnp.float64) for nu, cp in enumerate(cps)]
    v = jax.random.normal(jax.random.PRNGKey(9), (n, c, e3nn.Irreps(B_IRREPS).dim), jnp.float64)

    def loss(w3):
        forces = jax.grad(lambda x: jnp.sum(v * symmetric_contraction(x, [*ws[:2], w3], cps)))(a)
        return jnp.sum(forces**2)

    grad = jax.grad(loss)(ws[2])
    assert np.abs(grad).max() > 1e-3
    for index in [(0, 0, 0), (3, 5, 1), (4, -1, 0)]:
        step = jnp.zeros_like(ws[2]).at[index].set(1e-5)
        fd = (loss(ws[2] + step) - loss(ws[2] - step)) / 2e-5
        assert float(grad[index]) == pytest.approx(float(fd), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("irreps_h", ["0e", "0e+1o"])
def test_edge_messages_equal_e3nn_tensor_product(irreps_h):
    """The written-out one-particle-basis messages = e3nn-jax's tensor_product(h_j, Y).regroup(),
    radial weights applied per path and channel, in e3nn-jax's layout (what linear_a reads)."""
    c, e = 3, 6
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    irreps = e3nn.Irreps([(c, ir) for _, ir in e3nn.Irreps(irreps_h)])
    h = e3nn.IrrepsArray(irreps, jax.random.normal(k1, (e, irreps.dim), jnp.float64))
    sh = e3nn.spherical_harmonics("0e+1o+2e+3o", jax.random.normal(k2, (e, 3), jnp.float64), normalize=True)
    reference = e3nn.tensor_product(h, sh, filter_ir_out=sh.irreps).regroup()
    w = jax.random.normal(k3, (e, reference.irreps.num_irreps), jnp.float64)
    product = edge_product(irreps_h, str(sh.irreps))
    mine = edge_messages(jnp.swapaxes(h.mul_to_axis(c).array, 1, 2), sh.array, w.reshape(e, -1, c), product)
    assert e3nn.Irreps([(m * c, ir) for m, ir in e3nn.Irreps(product.irreps_out)]) == reference.irreps
    np.testing.assert_allclose(to_e3nn_layout(mine, product), (reference * w).array, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("irreps_in, irreps_out", [("3x0e+3x1o+3x2e", "3x0e+3x1o+3x2e"), ("3x0e+3x1o", "3x0e"),
                                                   ("3x0e+3x1o", "2x0e+4x1o+2x2e")])
def test_element_linear_equals_e3nn_indexed_linear(irreps_in, irreps_out):
    """ElementLinear (one GEMM on one-hot-scaled features) has e3nn-jax's indexed Linear's
    parameters and initial values — so saved MACE models load unchanged and a seed gives the same
    model — and its result, a missing output irrep (2e here) included."""
    ir = e3nn.Irreps(irreps_in)
    x = e3nn.IrrepsArray(ir, jax.random.normal(jax.random.PRNGKey(0), (5, ir.dim), jnp.float64))
    species = jnp.array([0, 2, 1, 1, 0])
    reference = e3nn.flax.Linear(irreps_out, num_indexed_weights=3, force_irreps_out=True)
    params = reference.init(jax.random.PRNGKey(1), species, x)
    mine = ElementLinear(irreps_out, 3)
    mine_init = mine.init(jax.random.PRNGKey(1), species, x)  # the same seed gives the same model
    assert jax.tree_util.tree_structure(mine_init) == jax.tree_util.tree_structure(params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, mine_init, params)
    want, got = reference.apply(params, species, x), mine.apply(params, species, x)
    assert got.irreps == want.irreps
    np.testing.assert_allclose(got.array, want.array, rtol=1e-12, atol=1e-12)


def test_edge_blocks_give_the_unblocked_energies_and_forces(monkeypatch):
    """Per-edge work summed in blocks of 16 edges (aggregation.sum_messages) = all edges at once."""
    config = {"name": "mace", "elements": ["Cu"], "cutoff": 4.0, "dtype": "float64",
              **SMALL, "max_ell": 1, "correlation": 2}  # the lightest compile that still has l = 1 paths
    pot = build_potential(config, seed=0)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=1)
    ref = pot.predict(atoms)
    monkeypatch.setattr(mace_module, "BLOCK_ABOVE", 0)
    monkeypatch.setattr(mace_module, "EDGE_CHUNK", 16)
    monkeypatch.setattr(compiled, "_CACHE", {})  # a fresh trace, not the unblocked compile
    pot = build_potential(config, seed=0)
    blocked = pot.predict(atoms)
    assert blocked["energy"] == pytest.approx(ref["energy"], rel=1e-12)
    np.testing.assert_allclose(blocked["forces"], ref["forces"], atol=1e-12)


# ---- the physics battery and the configuration -----------------------------------------------


def test_template_comments_every_mace_key():
    text = template("mace", ["H", "C"])
    model = yaml.safe_load(text)["model"]
    lines = {line.split(":")[0].strip(): line for line in text.splitlines() if line.startswith("  ")}
    for f in dataclasses.fields(MACEHParams):
        assert f.name in model, f.name
        assert "#" in lines[f.name], f"{f.name} has no comment"
    cfg = parse_model_config(model)
    assert cfg.hparams == MACEHParams() and cfg.hparams.hidden == e3nn.Irreps("128x0e+128x1o")
    assert (MACEHParams().num_interactions, MACEHParams().max_ell, MACEHParams().correlation) == (2, 3, 3)


def test_hidden_irreps_and_bad_hyperparameters_are_named():
    cfg = parse_model_config({"name": "mace", "elements": ["H"], "hidden_irreps": "8x0e+8x1o+8x2e"})
    assert cfg.hparams.channels == 8 and cfg.hparams.hidden.lmax == 2
    for bad, key in [({"hidden_irreps": "8x0e+4x1o"}, "hidden_irreps"), ({"hidden_irreps": "8x0e+8x1e"}, "hidden_irreps"),
                     ({"correlation": 0}, "correlation"), ({"mlp_irreps": "16x1o"}, "mlp_irreps"),
                     ({"num_polynomial_cutoff": 1}, "num_polynomial_cutoff"), ({"corelation": 2}, "correlation")]:
        with pytest.raises(ConfigError, match=key):
            parse_model_config({"name": "mace", "elements": ["H"], **bad})


@pytest.mark.parametrize("correlation", [1, 2])  # 3: SMALL's, which the fixture below runs in float64
def test_every_correlation_order_builds(correlation):
    pot = build_potential({"name": "mace", "elements": ["H", "C", "O"], "cutoff": 3.0, **SMALL, "correlation": correlation,
                           "num_interactions": 1})
    out = jax.jit(pot.energy_forces_stress)(pot.params, pot.device_graph(make_structure("molecule", 3)))
    assert np.all(np.isfinite(out["energy"])) and np.abs(out["forces"]).max() > 0 and out["forces"].dtype == jnp.float32
    assert {x.dtype for x in jax.tree_util.tree_leaves(pot.params)} == {jnp.dtype(jnp.float32)}


# ---- front ends ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pot():
    data = testing.labelled_dataset()
    return build_potential({"name": "mace", "elements": ["H", "C", "O"], "cutoff": 3.0, "dtype": "float64", **SMALL},
                           seed=2, dataset=data)


def test_save_load_round_trip_is_bit_identical(tmp_path, pot):
    atoms = make_structure("cell", 8)  # the calculator test's structure: one compile serves both
    pot.save(tmp_path / "pot")
    loaded = load_potential(tmp_path / "pot")
    assert loaded.config == pot.config
    a, b = pot.predict(atoms, compute_stress=True), loaded.predict(atoms, compute_stress=True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_calculator_stress_and_md_functions_agree_with_predict(pot):
    atoms = make_structure("cell", 8)
    ref = pot.predict(atoms, compute_stress=True)
    atoms.calc = pot.calculator()
    assert abs(atoms.get_potential_energy() - ref["energy"]) < 1e-10
    assert np.abs(atoms.get_stress(voigt=False) - ref["stress"].reshape(3, 3)).max() < 1e-10
    assert np.abs(ref["stress"]).max() > 0
    neighbor_fn, energy_fn = pot.md_functions(atoms)
    positions = jnp.asarray(atoms.positions)
    e, f = energy_fn.energy_and_forces(positions, neighbor=neighbor_fn.allocate(positions))
    assert abs(float(e) - ref["energy"]) < 1e-9 and np.abs(np.asarray(f) - ref["forces"]).max() < 1e-9


def test_committee_predicts_with_spread():
    from nnpes import Ensemble

    cfg = {"name": "mace", "elements": ["H", "C", "O"], "cutoff": 3.0, **SMALL, "num_interactions": 1, "correlation": 2}
    ens = Ensemble.build(cfg, 2, seed=0, dataset=testing.labelled_dataset())
    out = ens.predict(make_structure("molecule", 4))
    assert np.isfinite(out["energy"]) and np.all(np.isfinite(out["forces"]))
    assert float(np.max(out["force_std"])) > 0


def _copper_frames(n, seed):
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        frames.append(atoms)
    return frames


def test_short_training_decreases_the_loss(tmp_path):
    from ase.io import write

    from nnpes.training import train

    write(tmp_path / "train.extxyz", _copper_frames(8, 0))
    cfg = {
        "data": {"train": str(tmp_path / "train.extxyz"), "n_valid": 2},
        "model": {"name": "mace", "elements": ["Cu"], "cutoff": 3.0, **SMALL, "correlation": 2, "num_interactions": 1},
        "training": {"seed": 0, "max_epochs": 3, "batch_size": 3, "lr": 1e-2, "progress": False},
    }
    result = train(cfg, tmp_path / "run", quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert len(rows) == 3 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert load_potential(result.model).config.name == "mace"
