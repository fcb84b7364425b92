"""The physics battery every registered model inherits (names starting with "_" are skipped).

The checks live in ``nnpes.testing`` (users run them on their own models with ``run_battery``);
this module runs each of them on every registered model. A new model gets these tests by
registering; give it small hyperparameters in ``HPARAMS`` if its defaults are slow. Everything
runs in float64 on random molecules and random periodic cells (including cells smaller than the
cutoff). Each test sends its structures through one jitted energy/forces/stress call padded to one
fixed shape (``nnpes.testing.Evaluator``), so each model compiles once here.

``NNPES_BATTERY_MODELS=a,b`` runs the battery on the named models only (e.g. ``_toy`` when
developing it; the private test models live in ``tests/_toy_model.py``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from ase import Atoms

import _toy_model  # noqa: F401  (registers "_toy", "_rotating" and "_detached")
from nnpes import testing
from nnpes.models import MODELS, import_builtin_models
from nnpes.testing import CUTOFF, KINDS, PERIODIC_KINDS, make_structure

# Small hyperparameters per model so the battery stays cheap; a model missing here uses its defaults.
HPARAMS = {
    "nequip": {"num_layers": 2, "features": 8, "num_bessel": 6, "radial_mlp_width": 16},
    "behler_parrinello": {"hidden": [16], "n_radial": 4, "angular_etas": [0.05], "zetas": [1, 2]},
    "mace": {"num_channels": 4, "max_ell": 2, "correlation": 3, "radial_mlp": [8], "num_bessel": 4, "mlp_irreps": "4x0e"},
}


def battery_models() -> list[str]:
    import_builtin_models()
    wanted = os.environ.get("NNPES_BATTERY_MODELS")
    if wanted:
        return [m.strip() for m in wanted.split(",") if m.strip()]
    return sorted(name for name in MODELS if not name.startswith("_"))


@pytest.fixture(scope="module", params=battery_models())
def model(request):
    """One compiled evaluator per model, shared by every test of this module."""
    name = request.param
    return testing.battery_evaluator(name, HPARAMS.get(name), seed=1, dataset=testing.labelled_dataset())


# ---- symmetry --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_rotation_translation(model, kind):
    atoms = make_structure(kind, 11)
    testing.check_invariance(model, atoms)
    testing.check_equivariance(model, atoms)


@pytest.mark.parametrize("kind", KINDS)
def test_parity(model, kind):
    if getattr(model.pot.config.hparams, "parity", True) is False:
        pytest.skip(f"{model.name} is configured SE(3)-only (parity: false)")
    testing.check_parity(model, make_structure(kind, 12))


@pytest.mark.parametrize("kind", KINDS)
def test_o3_equivariance_e3nn(model, kind):
    """Random rotation with inversion, through e3nn-jax's assert_equivariant."""
    if getattr(model.pot.config.hparams, "parity", True) is False:
        pytest.skip(f"{model.name} is configured SE(3)-only (parity: false)")
    testing.check_o3_equivariance(model, make_structure(kind, 11))


@pytest.mark.parametrize("kind", KINDS)
def test_periodic_images_and_permutation(model, kind):
    atoms = make_structure(kind, 13)
    testing.check_permutation(model, atoms)
    if kind in PERIODIC_KINDS:
        testing.check_periodic_images(model, atoms)


# ---- derivatives -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_forces_are_minus_gradient(model, kind):
    testing.check_forces(model, make_structure(kind, 14), h=1e-5, tol=1e-6)


@pytest.mark.parametrize("kind", PERIODIC_KINDS)
def test_stress_is_strain_derivative(model, kind):
    testing.check_stress(model, make_structure(kind, 15), h=1e-5, tol=1e-6)


# ---- extensivity and locality ----------------------------------------------------------------


@pytest.mark.parametrize("kind", PERIODIC_KINDS)
def test_supercell_is_extensive(model, kind):
    testing.check_extensivity(model, make_structure(kind, 16))


def test_separated_molecules_add(model):
    a, b = make_structure("molecule", 17), make_structure("molecule", 18)
    b.positions += np.array([CUTOFF + 2.7 + 0.5, 0.3, -0.2])  # molecules span ≤ 2.6·√3 Å boxes
    testing.check_separated_add(model, a, b)


def test_dimer_vanishes_smoothly_at_cutoff(model):
    testing.check_cutoff_smoothness(model, "CO")


def test_atom_crossing_cutoff_in_a_molecule(model):
    """Three atoms: O moves along x and leaves H's cutoff while staying inside C's (many-body case)."""
    y = 1.5
    x_c = np.sqrt(CUTOFF**2 - y**2)
    testing.check_cutoff_crossing(model, lambda x: Atoms("HCO", positions=[[0, 0, 0], [1.5, 0, 0], [x, y, 0.0]]), x_c)


# ---- short-range repulsion (model.pair_repulsion: zbl) ---------------------------------------


# The term sits in EnergyModel, outside every model's network: one model checks it for all (it
# took ~13 s per model, the cost of compiling the model a second time with the term on).
@pytest.mark.parametrize("model", ["nequip"], indirect=True)
def test_pair_repulsion(model):
    """The same weights with the ZBL term on: zero beyond r_out, smooth at both switching radii,
    every dimer rising monotonically below r_in for these random weights, forces and stress by
    finite differences with pairs in every regime (``nnpes.testing.check_pair_repulsion``)."""
    from nnpes.potential.potential import Potential

    on = Potential(dataclasses.replace(model.pot.config, pair_repulsion="zbl"), model.pot.params)
    testing.check_pair_repulsion(testing.Evaluator(on, name=f"{model.name}+zbl"), off=model)


# ---- batching and compilation ----------------------------------------------------------------


def test_alone_equals_in_padded_batch(model):
    testing.check_padding(model, [make_structure(k, 19) for k in KINDS])


def test_predict_bucket_does_not_recompile(model):
    testing.check_no_recompile(model.pot, seed=20)


# ---- the battery itself ----------------------------------------------------------------------


def test_run_battery_passes_on_a_good_model():
    assert testing.run_battery("_toy", seed=1) == ["symmetry", "derivatives", "locality", "padding", "no_recompile"]


@pytest.fixture(scope="module")
def broken():
    return {name: testing.battery_evaluator(name, seed=1) for name in ("_rotating", "_detached")}


def test_battery_catches_a_model_that_is_not_rotation_invariant(broken):
    atoms = make_structure("molecule", 11)
    with pytest.raises(AssertionError, match=r"_rotating invariance: E not rotation invariant .*max \|Δ\| = "):
        testing.check_invariance(broken["_rotating"], atoms)
    with pytest.raises(AssertionError, match=r"_rotating O\(3\) equivariance"):
        testing.check_o3_equivariance(broken["_rotating"], atoms)
    testing.check_permutation(broken["_rotating"], atoms)  # only rotations are broken
    with pytest.raises(AssertionError, match="_rotating invariance"):
        testing.run_battery("_rotating", seed=1)


def test_battery_catches_forces_that_are_not_minus_grad_energy(broken):
    atoms = make_structure("molecule", 14)
    with pytest.raises(AssertionError, match=r"_detached forces: F differs from −dE/dR by"):
        testing.check_forces(broken["_detached"], atoms)
    testing.check_invariance(broken["_detached"], atoms)  # symmetric, only its forces are wrong


def test_checks_accept_a_potential_and_name_the_violation():
    pot = testing.battery_evaluator("_toy", seed=2).pot
    testing.check_forces(pot, make_structure("cell", 14))  # a Potential: wrapped in its own Evaluator
    with pytest.raises(AssertionError, match=r"^demo: E \(eV\): max \|Δ\| = 1\.000e-03 \(tolerance atol=1e-09, rtol=0\)$"):
        testing.assert_close("demo", "E (eV)", [1.001], [1.0], atol=1e-9)
