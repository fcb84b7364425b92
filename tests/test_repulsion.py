"""Short range (issue 15): the ZBL pair term (``model.pair_repulsion: zbl``, ``nnpes.models.repulsion``)
and the warning for atoms closer than the training data (``nnpes.graph.distances``). The term's
physics on every real model (finite differences, switching radii, monotonic dimers) runs in
``tests/test_physics.py::test_pair_repulsion``."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from ase import Atoms

import _toy_model  # noqa: F401  (registers "_toy")
from nnpes.config import template
from nnpes.config.schema import ConfigError
from nnpes.graph import atoms_to_graph
from nnpes.graph.distances import ShortDistanceWarning, close_contacts, merge_shortest, shortest_distances
from nnpes.models.repulsion import ZBLRepulsion, switch, switching_radii, zbl_potential
from nnpes.potential import ModelCard, build_potential, load_potential
from nnpes.potential.card import TrainingData

TOY = {"name": "_toy", "elements": ["H", "C", "O"], "cutoff": 3.0, "dtype": "float64"}


# ---- the ZBL term ----------------------------------------------------------------------------


def test_zbl_values_switch_and_radii():
    jax.config.update("jax_enable_x64", True)
    # Hand-computed from the ZBL formula: k_e = 14.399645 eV·Å, a = 0.8854·0.529177 Å / (Z^0.23 + Z^0.23).
    assert float(zbl_potential(0.5, 6.0, 6.0)) == pytest.approx(119.92164, rel=1e-6)
    assert float(zbl_potential(1.0, 8.0, 1.0)) == pytest.approx(4.77232, rel=1e-5)
    r_in, r_out = switching_radii([1, 6, 8])  # ase covalent radii H 0.31, C 0.76, O 0.66 Å
    assert r_in[0, 1] == pytest.approx(0.5 * 1.07) and r_out[0, 2] == pytest.approx(0.8 * 0.97)
    # s, s', s'' at r = 0.1, r_in, mid, r_out, 2.0 (one jitted call: eager float64 ops are slow)
    s, ds, dds = (np.asarray(x) for x in jax.jit(jax.vmap(lambda r: (
        switch(r, 0.5, 0.8), jax.grad(switch)(r, 0.5, 0.8), jax.grad(jax.grad(switch))(r, 0.5, 0.8))))(
        jnp.array([0.1, 0.5, 0.65, 0.8, 2.0])))
    assert list(s[[0, 1]]) == [1.0, 1.0] and list(s[[3, 4]]) == [0.0, 0.0]  # exactly, outside
    assert list(ds[[0, 1, 3, 4]]) == [0.0] * 4 and ds[2] < 0
    assert np.abs(dds[[1, 3]]).max() < 1e-9  # C² at both radii


def test_zbl_is_exactly_zero_with_zero_gradient_on_padding_and_beyond_r_out():
    jax.config.update("jax_enable_x64", True)
    term = ZBLRepulsion((1, 6, 8))
    # Edges (receiver ← sender): H–C at 0.6 Å both ways, C–O at 1.2 Å (> r_out 1.136), two padding edges.
    vectors = jnp.array([[0.6, 0, 0], [-0.6, 0, 0], [1.2, 0, 0], [-1.2, 0, 0], [0, 0, 0], [0, 0, 0]])
    species = jnp.array([0, 1, 2, 0])
    senders, receivers = jnp.array([1, 0, 2, 1, 3, 3]), jnp.array([0, 1, 1, 2, 3, 3])
    mask = jnp.array([True, True, True, True, False, False])

    def energies_and_grad(v):  # one jitted call: eager float64 ops are slow
        energy = lambda w: term(w, species, senders, receivers, mask)  # noqa: E731
        return energy(v), jax.grad(lambda w: energy(w).sum())(v)

    e, g = jax.jit(energies_and_grad)(vectors)
    v_ch = float(zbl_potential(0.6, 1.0, 6.0) * switch(0.6, 0.5 * 1.07, 0.8 * 1.07))
    np.testing.assert_allclose(e[:2], 0.5 * v_ch, rtol=1e-12)
    assert np.all(np.asarray(e[2:]) == 0.0) and np.all(np.asarray(g[2:]) == 0.0)
    assert np.all(np.isfinite(g)) and float(g[0, 0]) < 0  # the pair pushes apart


@pytest.fixture(scope="module")
def toy():
    return build_potential(TOY, seed=0)


@pytest.fixture(scope="module")
def toy_zbl():
    return build_potential({**TOY, "pair_repulsion": "zbl"}, seed=0)


def test_config_key_default_off_saved_only_when_on(toy, toy_zbl, tmp_path):
    off, on = toy, toy_zbl
    assert off.config.pair_repulsion == "none" and off.module.repulsion is None
    assert "pair_repulsion" not in yaml.safe_load((off.save(tmp_path / "off") / "config.yaml").read_text())["model"]
    assert jax.tree_util.tree_structure(on.params) == jax.tree_util.tree_structure(off.params)  # nothing trained
    on.save(tmp_path / "on")
    back = load_potential(tmp_path / "on")
    assert back.config.pair_repulsion == "zbl"
    dimer = Atoms("CH", positions=[[0, 0, 0], [0.6, 0, 0]])
    e_on, e_off, e_back = (p.predict(dimer)["energy"] for p in (on, off, back))
    assert e_back == e_on and e_on - e_off == pytest.approx(float(zbl_potential(0.6, 6.0, 1.0) * switch(0.6, 0.535, 0.856)))
    with pytest.raises(ConfigError, match=r"model.pair_repulsion: 'zlb' is not one of \['none', 'zbl'\] \(did you mean 'zbl'\?\)"):
        build_potential({**TOY, "pair_repulsion": "zlb"})
    with pytest.raises(ConfigError, match=r"zbl reaches 1.22 Å for C–C, beyond the cutoff 1.0 Å"):
        build_potential({**TOY, "cutoff": 1.0, "pair_repulsion": "zbl"})
    assert "pair_repulsion: none" in template("nequip") and "zbl" in template("nequip")


def test_outer_radius_from_the_data_covers_what_the_data_never_reached(tmp_path):
    """Built on data, each pair's r_out is the farther of 0.8·(R_i + R_j) and 0.9 of the pair's shortest
    distance in the data: H–H, 1.52 Å apart at the closest in water, is covered out to 1.37 Å; the
    term stays zero on every training structure (none is inside a covalent r_out either); the radii
    are saved with the model."""
    from ase.calculators.singlepoint import SinglePointCalculator

    from nnpes.testing import check_pair_repulsion, with_pair_repulsion

    data = [Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
            Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [-1.09, 0, 0]])]
    for k, a in enumerate(data):
        a.calc = SinglePointCalculator(a, energy=-1.0 - k, forces=np.full((3, 3), 0.1))
    pot = build_potential({**TOY, "pair_repulsion": "zbl"}, seed=0, dataset=data)
    outer = pot.config.pair_repulsion_outer
    assert outer == pytest.approx({"H-H": 0.9 * 1.5182, "H-C": 0.9 * 1.09, "H-O": 0.9 * 0.96, "C-C": 0.8 * 1.52,
                                   "C-O": 0.8 * 1.42, "O-O": 0.8 * 1.32}, abs=1e-4)
    plain = with_pair_repulsion(pot, "none")
    for a, b in zip(pot.predict(data), plain.predict(data)):  # zero on the data
        assert a["energy"] == pytest.approx(b["energy"], abs=1e-12)
        np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-12)
    h2 = Atoms("HH", positions=[[0, 0, 0], [1.0, 0, 0]])  # beyond the covalent 0.50 Å, inside 0.9 × 1.52
    assert pot.predict(h2)["energy"] - plain.predict(h2)["energy"] > 0.05
    back = load_potential(pot.save(tmp_path / "m"))
    assert back.config.pair_repulsion_outer == outer and back.predict(h2)["energy"] == pot.predict(h2)["energy"]
    check_pair_repulsion(pot)  # smooth at both radii, monotonic below r_in, finite differences
    with pytest.raises(ConfigError, match=r"unknown pair 'C-H' \(did you mean 'H-C'\?\)"):
        build_potential({**TOY, "pair_repulsion": "zbl", "pair_repulsion_outer": {"C-H": 1.0}})
    with pytest.raises(ConfigError, match=r"H-H r_out 0.200 Å must be beyond r_in 0.310 Å"):
        build_potential({**TOY, "pair_repulsion": "zbl", "pair_repulsion_outer": {"H-H": 0.2}})
    with pytest.raises(ConfigError, match="pair_repulsion_outer is set but pair_repulsion is 'none'"):
        build_potential({**TOY, "pair_repulsion_outer": {"H-H": 1.0}})



def test_fine_tuning_keeps_the_saved_switching_radii(tmp_path):
    """``init_from`` carries the parent's data-derived r_out (it once fell back to the covalent
    0.8·(R_i + R_j), changing H–H at 1 Å without a word); dropping the term is an error; switching
    it on for a model saved without it takes the radii from the fine-tuning data."""
    from ase.calculators.singlepoint import SinglePointCalculator

    data = [Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])]
    closer = [Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.05, 0.96, 0]])]  # H–H 1.39 Å
    for a in data + closer:
        a.calc = SinglePointCalculator(a, energy=-1.0, forces=np.full((3, 3), 0.1))
    parent = build_potential({**TOY, "pair_repulsion": "zbl"}, seed=0, dataset=data)
    path = parent.save(tmp_path / "parent")
    child = build_potential({**TOY, "pair_repulsion": "zbl", "init_from": str(path)}, dataset=closer)
    assert child.config.pair_repulsion_outer == parent.config.pair_repulsion_outer
    h2 = Atoms("HH", positions=[[0, 0, 0], [1.0, 0, 0]])  # inside the data's H–H r_out, beyond the covalent one
    assert child.predict(h2)["energy"] == pytest.approx(parent.predict(h2)["energy"], abs=1e-12)
    own = build_potential({**TOY, "pair_repulsion": "zbl", "pair_repulsion_outer": {"H-H": 1.2}, "init_from": str(path)})
    assert own.config.pair_repulsion_outer == {"H-H": 1.2}  # set by hand: the config's
    with pytest.raises(ConfigError, match="the saved model has pair_repulsion: zbl; set model.pair_repulsion: zbl"):
        build_potential({**TOY, "init_from": str(path)})
    plain = build_potential(TOY, seed=0).save(tmp_path / "plain")
    switched_on = build_potential({**TOY, "pair_repulsion": "zbl", "init_from": str(plain)}, dataset=closer)
    assert switched_on.config.pair_repulsion_outer["H-H"] == pytest.approx(0.9 * 1.3934, abs=1e-4)

# ---- closer than the training data -----------------------------------------------------------


def test_shortest_distances_per_pair_and_close_contacts():
    water = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    cell = Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 1.4, pbc=True)  # H–H 1.4 Å: an image
    graphs = [atoms_to_graph(a, 3.0) for a in (water, cell)]
    short = shortest_distances(graphs, ["H", "O"])
    assert short == {"H-H": 1.4, "H-O": 0.96}  # water H–H is 1.518 Å
    close = close_contacts([atoms_to_graph(a, 3.0) for a in (water, Atoms("OH", positions=[[0, 0, 0], [0.7, 0, 0]]),
                                                              Atoms("OO", positions=[[0, 0, 0], [2.0, 0, 0]]))],
                           short, ["H", "O"], 3.0)
    assert [(c.structure, c.i, c.j, c.pair, c.seen) for c in close] == [(1, 0, 1, "H-O", True), (2, 0, 1, "O-O", False)]
    assert close[0].distance == pytest.approx(0.7) and close[1].shortest == 3.0
    # models trained on different data (bootstrap committee members): the shorter per pair
    assert merge_shortest([{"H-H": 1.4, "H-O": 0.96}, None, {"H-H": 1.2, "O-O": 2.5}]) == {
        "H-H": 1.2, "H-O": 0.96, "O-O": 2.5}
    assert merge_shortest([None, {}]) is None
    # the data never warn about themselves: 1.33196 Å is recorded as 1.3319, not 1.332
    co = [atoms_to_graph(Atoms("CO", positions=[[0, 0, 0], [1.33196, 0, 0]]), 3.0)]
    assert shortest_distances(co, ["C", "O"]) == {"C-O": 1.3319} and close_contacts(co, {"C-O": 1.3319}, ["C", "O"], 3.0) == []


@pytest.fixture(scope="module")
def carded(toy):
    pot = toy.replace(toy.params)
    pot.card = ModelCard.of(pot, data=TrainingData([], {"train": 1}, shortest_distances={"H-H": 0.74, "H-C": 1.0}))
    return pot


def test_predict_and_evaluate_warn_once_per_call_naming_the_pair(toy, carded, tmp_path):
    h2 = [Atoms("HH", positions=[[0, 0, 0], [r, 0, 0]]) for r in (0.5, 0.74, 0.6)]
    with pytest.warns(ShortDistanceWarning) as rec:
        carded.predict(h2)
    assert len(rec) == 1 and rec[0].filename == __file__  # points at the caller
    assert str(rec[0].message) == ("structure 0: atoms 0 and 1 (H-H) are 0.500 Å apart, but the shortest H-H distance "
                                   "in the training data is 0.740 Å: the model is extrapolating; 2 of 3 structures have such a pair")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        carded.predict(h2[1])  # at the shortest distance: silent
        toy.predict(h2[0])  # no card, nothing recorded: silent
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from nnpes.cli.main import main

    carded.save(tmp_path / "m")
    for a in h2:
        a.calc = SinglePointCalculator(a, energy=0.0, forces=np.zeros((2, 3)))
    write(tmp_path / "h2.extxyz", h2)
    with pytest.warns(ShortDistanceWarning, match="structure 0: atoms 0 and 1 \\(H-H\\) are 0.500 Å apart") as rec:
        assert main(["evaluate", str(tmp_path / "m"), str(tmp_path / "h2.extxyz"), "--out", str(tmp_path / "m.json")]) == 0
    assert len([w for w in rec if w.category is ShortDistanceWarning]) == 1


def test_md_start_closer_than_the_data_warns(carded):
    from nnpes.md import run_md

    with warnings.catch_warnings():  # as an error: stops run_md before it compiles anything
        warnings.simplefilter("error", ShortDistanceWarning)
        with pytest.raises(ShortDistanceWarning, match=r"atoms 0 and 1 \(H-C\) are 0.900 Å apart.* is 1.000 Å"):
            run_md(carded, Atoms("CH", positions=[[0, 0, 0], [0.9, 0, 0]]), steps=1, timestep=0.1)


def test_md_energy_function_carries_the_term(toy_zbl):
    """The on-device Verlet list feeds the same term: MD's energy and forces equal predict's."""
    on = toy_zbl
    atoms = Atoms("CHO", positions=[[0, 0, 0], [0.6, 0, 0], [0.0, 0.9, 0.1]])  # C–H inside r_in, C–O switching
    neighbor_fn, energy_fn = on.md_functions(atoms)
    r = jnp.asarray(atoms.positions)
    nbrs = neighbor_fn.allocate(r)
    ref = on.predict(atoms)
    energy, forces = jax.jit(energy_fn.energy_and_forces)(r, nbrs)
    assert float(energy) == pytest.approx(ref["energy"], rel=1e-12)
    np.testing.assert_allclose(forces, ref["forces"], atol=1e-10)


def test_check_pair_repulsion_catches_a_switch_with_a_kink(monkeypatch):
    """A linear switch (continuous E, forces that jump at r_in and r_out) fails the check."""
    from nnpes import models, testing

    monkeypatch.setattr(models.repulsion, "switch", lambda r, r_in, r_out: 1.0 - jnp.clip((r - r_in) / (r_out - r_in), 0, 1))
    ev = testing.Evaluator(build_potential({**TOY, "pair_repulsion": "zbl"}, seed=0))
    with pytest.raises(AssertionError, match=r"^_toy cutoff: F jumps at the cutoff"):
        testing.check_pair_repulsion(ev)
