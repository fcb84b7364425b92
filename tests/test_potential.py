"""The Potential API: build from configs and data, save/load, predict, the ase calculator."""

from __future__ import annotations

import dataclasses

import jax
import jraph
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

import _toy_model  # noqa: F401  (registers "_toy")
from nnpes.models import MODELS, register
from nnpes.potential import build_potential, load_potential
from nnpes.config.schema import ConfigError
from nnpes.graph.stats import compute_stats

ELEMENTS = ["H", "C", "O"]
TOY = {"name": "_toy", "elements": ELEMENTS, "cutoff": 3.0}


def molecule(seed, n=6, box=2.6) -> Atoms:
    rng = np.random.default_rng(seed)
    while True:
        pos = rng.uniform(0, box, (n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + 10 * np.eye(n)
        if d.min() > 1.0:
            return Atoms([ELEMENTS[k % 3] for k in range(n)], positions=pos)


def crystal(seed, n=3, length=3.3) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = length * np.eye(3) + rng.uniform(-0.2, 0.2, (3, 3))
    return Atoms([ELEMENTS[k % 3] for k in range(n)], scaled_positions=rng.uniform(0, 1, (n, 3)), cell=cell, pbc=True)


def grid_cluster(rng, n, side=4, spacing=1.3) -> Atoms:
    """n atoms on random sites of a cubic grid (Å), rattled: dense, no overlaps, quick to make."""
    sites = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    pos = sites[rng.choice(len(sites), n, replace=False)] + rng.uniform(-0.1, 0.1, (n, 3))
    return Atoms([ELEMENTS[k % 3] for k in range(n)], positions=pos)


def labelled(atoms_list):
    out = []
    for a in atoms_list:
        a = a.copy()
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


def trees_equal(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def toy64():
    return build_potential({**TOY, "dtype": "float64"}, seed=0)


# ---- building --------------------------------------------------------------------------------


def test_build_accepts_dict_yaml_bare_and_full_config(tmp_path):
    bare = build_potential(TOY, seed=3)
    full = build_potential({"model": TOY, "training": {"whatever": 1}, "data": {"train": "x.xyz"}}, seed=3)
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(TOY))
    (tmp_path / "full.yaml").write_text(yaml.safe_dump({"model": TOY, "training": {"epochs": 3}}))
    from_bare = build_potential(tmp_path / "bare.yaml", seed=3)
    from_full = build_potential(str(tmp_path / "full.yaml"), seed=3)
    for p in (full, from_bare, from_full):
        assert p.config == bare.config
        assert trees_equal(p.params, bare.params)
    assert not trees_equal(build_potential(TOY, seed=4).params, bare.params)
    # defaults without data are written into the config
    assert bare.config.e0 == {s: 0.0 for s in ELEMENTS} and bare.config.scale == 1.0
    assert bare.config.avg_num_neighbors == 1.0


def test_build_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_potential(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="widht"):
        build_potential({**TOY, "widht": 2.0})
    with pytest.raises(ConfigError, match="elements"):
        build_potential({"name": "_toy"})


@dataclasses.dataclass
class CalHParams:
    width: float = 1.0


CALIBRATE_CALLS = []


def _calibrate(module, variables, padded_graphs):
    CALIBRATE_CALLS.append(padded_graphs)
    n_real = sum(int(np.sum(jraph.get_node_padding_mask(g))) for g in padded_graphs)
    return {**variables, "constants": {"n_atoms_seen": np.float64(n_real)}}


if "_toy_cal" not in MODELS:
    register("_toy_cal", CalHParams, calibrate=_calibrate)(
        lambda hp, cfg: _toy_model.ToyModel(n_elements=len(cfg.elements), cutoff=cfg.cutoff, width=hp.width)
    )


def test_dataset_sets_e0_scale_neighbours_and_runs_calibrate():
    data = labelled([molecule(s, n=4) for s in range(3)] + [crystal(s) for s in range(3)])
    stats = compute_stats(data, ELEMENTS, 3.0)
    CALIBRATE_CALLS.clear()
    pot = build_potential({**TOY, "name": "_toy_cal", "dtype": "float64"}, dataset=data)
    assert pot.config.e0 == pytest.approx(stats.e0)
    assert pot.config.scale == pytest.approx(stats.force_rms)
    assert pot.config.avg_num_neighbors == pytest.approx(stats.avg_num_neighbors)
    assert len(CALIBRATE_CALLS) == 1
    # the hook saw every real atom of the dataset, on padded graphs
    assert float(pot.params["constants"]["n_atoms_seen"]) == sum(len(a) for a in data)
    # E0 reaches the model: an isolated atom has E = E0 (the toy's E_i is 0 without neighbours)
    for s in ELEMENTS:
        assert pot.predict(Atoms(s))["energy"] == pytest.approx(stats.e0[s], abs=1e-12)
    # values given in the config are kept
    fixed = build_potential({**TOY, "dtype": "float64", "scale": 2.5, "e0": {"H": -1.0}}, dataset=data)
    assert fixed.config.scale == 2.5 and fixed.config.e0 == {"H": -1.0}


def test_dtype_switches_the_whole_potential(toy64):
    from nnpes.graph import pad_to_bucket, to_device
    from nnpes.graph import atoms_to_graph

    pot32 = build_potential(TOY)
    g = pad_to_bucket(atoms_to_graph(molecule(0), 3.0))
    for pot, dtype in ((pot32, np.float32), (toy64, np.float64)):
        assert all(np.asarray(x).dtype == dtype for x in jax.tree_util.tree_leaves(pot.params))
        out = jax.eval_shape(pot.energy_forces_stress, pot.params, to_device(g, pot.dtype))
        assert all(v.dtype == dtype for v in out.values()), out


# ---- save / load -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["toy32", "nequip", "behler_parrinello"])
def test_save_load_round_trip_is_bit_identical(tmp_path, which):
    structures = [molecule(5), crystal(6)]
    if which == "toy32":
        pot = build_potential(TOY, seed=2)
    else:
        if which not in MODELS:
            pytest.skip(f"model {which} not registered")
        from test_physics import HPARAMS

        cfg = {"model": {"name": which, "elements": ELEMENTS, "cutoff": 3.0, **HPARAMS[which]}}
        pot = build_potential(cfg, seed=2, dataset=labelled(structures))
    pot.save(tmp_path / "pot")
    assert sorted(p.name for p in (tmp_path / "pot").iterdir()) == ["card.yaml", "config.yaml", "params.msgpack"]
    saved = yaml.safe_load((tmp_path / "pot" / "config.yaml").read_text())
    import nnpes

    assert saved["nnpes_version"] == nnpes.__version__ and saved["model"]["name"] == pot.config.name
    loaded = load_potential(tmp_path / "pot")
    assert loaded.config == pot.config
    assert trees_equal(loaded.params, pot.params)
    for a, b in zip(pot.predict(structures), loaded.predict(structures)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    pot.save(tmp_path / "pot")  # overwriting an existing save works and leaves no temp files
    assert sorted(p.name for p in (tmp_path / "pot").iterdir()) == ["card.yaml", "config.yaml", "params.msgpack"]


def test_load_errors(tmp_path, toy64):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        load_potential(tmp_path / "missing_dir")
    toy64.save(tmp_path / "p")
    (tmp_path / "p" / "params.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="params.msgpack"):
        load_potential(tmp_path / "p")
    (tmp_path / "p" / "params.msgpack").unlink()
    with pytest.raises(FileNotFoundError, match="params.msgpack"):
        load_potential(tmp_path / "p")
    # parameters of another architecture are refused, not silently used
    toy64.save(tmp_path / "q")
    cfg = yaml.safe_load((tmp_path / "q" / "config.yaml").read_text())
    cfg["model"]["elements"] = ["H", "C"]
    cfg["model"]["e0"] = {"H": 0.0, "C": 0.0}
    (tmp_path / "q" / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load_potential(tmp_path / "q")


# ---- predict ---------------------------------------------------------------------------------


def test_predict_list_matches_single_and_stress_only_when_periodic(toy64):
    structures = [molecule(1), crystal(2), molecule(3, n=4), crystal(4, n=2)]
    many = toy64.predict(structures)
    assert isinstance(many, list) and len(many) == 4
    for atoms, res in zip(structures, many):
        one = toy64.predict(atoms)
        assert set(one) == ({"energy", "forces", "energies", "stress"} if atoms.pbc.all() else {"energy", "forces", "energies"})
        np.testing.assert_allclose(res["energy"], one["energy"], rtol=1e-12)
        np.testing.assert_allclose(res["forces"], one["forces"], atol=1e-12)
        assert res["forces"].shape == (len(atoms), 3) and res["energies"].shape == (len(atoms),)
        assert res["energies"].sum() == pytest.approx(res["energy"], abs=1e-12)
        if atoms.pbc.all():
            assert res["stress"].shape == (3, 3)
    assert "stress" not in toy64.predict(crystal(2), compute_stress=False)


def test_unknown_element_is_a_clear_error(toy64):
    bad = molecule(1)
    bad[2].symbol = "N"
    with pytest.raises(ValueError, match=r"\['N'\].*\['H', 'C', 'O'\]"):
        toy64.predict(bad)
    with pytest.raises(ValueError, match="structure 1"):
        toy64.predict([molecule(2), bad])
    nan = molecule(3)
    nan.positions[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"structure 1: non-finite positions for atoms \[4\]"):
        toy64.predict([molecule(2), nan])


def test_loaded_copy_shares_the_compiled_function(tmp_path, toy64):
    atoms = molecule(12)
    ref = toy64.predict(atoms)
    toy64.save(tmp_path / "p")
    before = toy64.n_compiles
    loaded = load_potential(tmp_path / "p")
    np.testing.assert_array_equal(loaded.predict(atoms)["forces"], ref["forces"])
    assert loaded.n_compiles == before
    # a different architecture gets its own
    other = build_potential({**TOY, "dtype": "float64", "width": 0.7})
    assert other._compiled is not toy64._compiled


def test_many_structures_of_one_bucket_compile_once(toy64):
    rng = np.random.default_rng(0)
    base = molecule(9)
    toy64.predict(base)
    before = toy64.n_compiles
    for _ in range(5):
        a = base.copy()
        a.rattle(0.01, seed=int(rng.integers(1 << 30)))
        toy64.predict(a)
    assert toy64.n_compiles == before


def test_a_set_of_similar_sizes_compiles_once_and_a_mixed_set_a_few_times(caplog):
    # 40 frames of 44-52 atoms, ~2000-2600 edges each, so one frame per call: their calls used to
    # land on different ladder rungs and compiled once per rung (9 times in issue 12's Cu set);
    # one shared shape now serves the whole set.
    pot = build_potential({**TOY, "cutoff": 5.0, "dtype": "float64", "width": 0.55})
    rng = np.random.default_rng(3)
    frames = [grid_cluster(rng, int(rng.integers(44, 53))) for _ in range(40)]
    before = pot.n_compiles
    with caplog.at_level("INFO", logger="nnpes"):
        pot.predict(frames)
        pot.predict(frames[::-1])  # the same set again: nothing new to compile
    assert pot.n_compiles - before == 1
    assert [r.getMessage() for r in caplog.records] == ["compiling 1 padded shape for 40 structures…"]
    # sizes far apart: at most one shape per factor of two, not one per call
    mixed = frames[:10] + [grid_cluster(rng, 3) for _ in range(30)] + [grid_cluster(rng, 120, side=6)]
    before = pot.n_compiles
    out = pot.predict(mixed)
    assert pot.n_compiles - before <= 4
    single = pot.predict(mixed[-1])
    np.testing.assert_allclose(out[-1]["forces"], single["forces"], rtol=1e-12, atol=1e-12)


def test_shared_shapes_groups_by_factor_two_and_always_ends():
    from nnpes.potential.predict import shared_shapes

    assert shared_shapes([(40, 2000, 2), (48, 2560, 2), (40, 2048, 4)]) == [(48, 2560, 4)] * 3
    # many nodes / few edges next to few nodes / many edges: two groups, each padded to itself
    assert shared_shapes([(200, 64, 2), (16, 2048, 2)]) == [(200, 64, 2), (16, 2048, 2)]
    assert shared_shapes([]) == []


def test_replace_changes_prediction_and_shares_compiled_function(toy64):
    atoms = molecule(11)
    e0 = toy64.predict(atoms)["energy"]
    before = toy64.n_compiles
    params = jax.tree_util.tree_map(lambda x: 2.0 * x, toy64.params)
    other = toy64.replace(params)
    assert other.predict(atoms)["energy"] != e0
    assert toy64.predict(atoms)["energy"] == e0  # the original is untouched
    assert other.n_compiles == before


# ---- ase calculator --------------------------------------------------------------------------


def test_calculator_properties(toy64):
    atoms = crystal(21)
    atoms.calc = toy64.calculator()
    ref = toy64.predict(atoms)
    assert atoms.get_potential_energy() == pytest.approx(ref["energy"])
    assert atoms.get_potential_energy(force_consistent=True) == pytest.approx(ref["energy"])
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"])
    np.testing.assert_allclose(atoms.get_potential_energies(), ref["energies"])
    assert "stress" not in atoms.calc.results  # energy and forces never pay for the strain derivative
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    # ase's own finite-difference stress checks the Voigt order and sign
    np.testing.assert_allclose(stress, atoms.calc.calculate_numerical_stress(atoms, d=1e-5), atol=1e-7)
    mol = molecule(22)
    mol.calc = toy64.calculator()
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        mol.get_stress()


def test_calculator_drives_bfgs(toy64):
    from ase.optimize import BFGS

    atoms = molecule(31)
    atoms.calc = toy64.calculator()
    e_start = atoms.get_potential_energy()
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=0.01, steps=500)
    assert np.abs(atoms.get_forces()).max() < 0.01 * np.sqrt(3)
    assert atoms.get_potential_energy() < e_start


def test_calculator_drives_velocity_verlet(toy64):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = crystal(41, n=3)
    atoms.calc = toy64.calculator()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    md = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    e_tot, e_pot = [], []
    for _ in range(40):
        md.run(5)
        e_pot.append(atoms.get_potential_energy())
        e_tot.append(e_pot[-1] + atoms.get_kinetic_energy())
    drift = np.ptp(e_tot)
    assert np.ptp(e_pot) > 1e-3, "atoms did not move: test is vacuous"
    assert drift < 0.05 * np.ptp(e_pot), f"total energy drifted by {drift} eV"


def test_calculator_drives_neb(toy64):
    from ase.mep import NEB
    from ase.optimize import FIRE

    start = molecule(51, n=4)
    end = start.copy()
    end.positions[0] += [0.4, 0.2, 0.0]
    images = [start] + [start.copy() for _ in range(3)] + [end]
    for im in images:
        im.calc = toy64.calculator()
    neb = NEB(images, method="improvedtangent")
    neb.interpolate()
    FIRE(neb, logfile=None).run(fmax=0.05, steps=10)
    forces = neb.get_forces()
    assert forces.shape == (3 * len(start), 3) and np.all(np.isfinite(forces))
    # each interior image was evaluated by the potential at its current geometry
    for im in images[1:-1]:
        assert im.get_potential_energy() == pytest.approx(toy64.predict(im)["energy"], abs=1e-12)
