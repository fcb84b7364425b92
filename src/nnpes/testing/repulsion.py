"""Checks of a model's fixed pair repulsion (``model.pair_repulsion``): for every element pair, the
term is exactly zero from its outer radius on, switches on smoothly at both switching radii, and
makes the dimer energy rise monotonically as the atoms are pushed together. Same conventions as
``nnpes.testing.checks``."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
from ase import Atoms

from nnpes.testing.checks import assert_close, check_forces, check_stress
from nnpes.testing.evaluator import Evaluator, as_evaluator
from nnpes.testing.locality import check_cutoff_crossing
from nnpes.testing.structures import random_cell, random_molecule


def _dimer(a: str, b: str):
    return lambda r: Atoms([a, b], positions=[[0, 0, 0], [r, 0.0, 0.0]])


def with_pair_repulsion(pot, kind: str, outer: dict[str, float] | None = None):
    """The same weights and model card with ``pair_repulsion`` = ``kind`` and r_out per pair
    ``outer`` (Å; None: covalent). The term has no parameters, so nothing else changes."""
    from nnpes.potential.potential import Potential

    cfg = dataclasses.replace(pot.config, pair_repulsion=kind, pair_repulsion_outer=outer if kind != "none" else None)
    return Potential(cfg, pot.params, card=pot.card)


def without_repulsion(pot) -> Evaluator:
    """An ``Evaluator`` of the same parameters with ``pair_repulsion: none`` (the network alone)."""
    ev = as_evaluator(pot)
    return Evaluator(with_pair_repulsion(ev.pot, "none"), ev.pad, name=f"{ev.name} without repulsion")


def check_pair_repulsion(pot, off=None, r_min: float = 0.1) -> None:
    """For each element pair of a model with ``pair_repulsion`` on: the term (E − E without it) is
    zero (< 1e-12 eV, forces within 1e-12 eV/Å) at and beyond r_out, and > 0 below it; E and F are continuous
    across r_in and r_out; E rises strictly as r falls from r_in to ``r_min`` Å; forces and stress
    match finite differences with pairs in every regime. ``off``: an
    ``Evaluator`` of the model without the term (default: built here, one more compilation)."""
    from nnpes.models.repulsion import switching_radii

    ev = as_evaluator(pot)
    cfg = ev.pot.config
    assert cfg.pair_repulsion != "none", f"{ev.name} pair repulsion: the model has none (check is vacuous)"
    off = without_repulsion(ev) if off is None else off
    r_in, r_out = switching_radii(cfg.numbers, cfg.pair_repulsion_outer)
    check = f"{ev.name} pair repulsion"
    for (i, a), (j, b) in itertools.combinations_with_replacement(enumerate(cfg.elements), 2):
        path, lo, hi = _dimer(a, b), r_in[i, j], r_out[i, j]
        rs = np.concatenate([np.linspace(r_min, lo, 25), np.linspace(lo, hi, 15)[1:], hi + np.geomspace(1e-9, 1.0, 6)])
        on_, off_ = ev([path(r) for r in rs]), off([path(r) for r in rs])
        term = np.array([x["energy"] - y["energy"] for x, y in zip(on_, off_)])
        beyond = rs >= hi
        # Two compiled programs may round differently: zero means below 1e-12 here (the term itself is
        # exactly zero there: tests/test_repulsion.py).
        assert np.all(np.abs(term[beyond]) < 1e-12), \
            f"{check}: {a}-{b} term {np.abs(term[beyond]).max():.3e} eV beyond r_out {hi:.3f} Å"
        for k in np.flatnonzero(beyond):
            assert_close(check, f"{a}-{b} F changed beyond r_out (eV/Å)", on_[k]["forces"], off_[k]["forces"], atol=1e-12)
        assert np.all(term[~beyond] > 0), f"{check}: {a}-{b} term not positive inside r_out"
        e = np.array([x["energy"] for x in on_])[rs <= lo]
        rise = np.diff(e)  # along increasing r: must fall
        assert np.all(rise < 0), (f"{check}: {a}-{b} E does not rise monotonically below r_in {lo:.3f} Å "
                                  f"(worst step {rise.max():+.3e} eV at r = {rs[np.argmax(rise)]:.3f} Å)")
        for x_c in (lo, hi):
            check_cutoff_crossing(ev, path, x_c)
    # Derivatives with pairs in every regime (full ZBL, switching, off).
    rng = np.random.default_rng(5)
    check_forces(ev, random_molecule(rng, n=6, box=1.6, min_dist=0.3, elements=cfg.elements))
    check_stress(ev, random_cell(rng, n=3, length=2.2, min_dist=0.35, elements=cfg.elements, cutoff=ev.pot.cutoff))
