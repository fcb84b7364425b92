"""Committees and active learning (issue 6). Tiny private model so every test compiles fast."""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from nnpes.models import register
from nnpes.models.radial import bessel_basis, polynomial_envelope, safe_norm


@dataclass
class TinyHParams:
    features: int = 8
    n_basis: int = 4


class _TinyPair(nn.Module):
    """E_i = Σ_j MLP(species_i, bessel(r_ij)) · u(r_ij): a smooth many-body-free test model."""

    cutoff: float
    n_species: int
    features: int
    n_basis: int

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask):
        r = safe_norm(vectors)
        basis = bessel_basis(r, self.cutoff, self.n_basis)
        emb = nn.Embed(self.n_species, self.features, param_dtype=vectors.dtype)(species)
        h = nn.silu(nn.Dense(self.features, param_dtype=vectors.dtype)(basis) * emb[receivers] * emb[senders])
        e_ij = nn.Dense(1, param_dtype=vectors.dtype)(h)[:, 0] * polynomial_envelope(r, self.cutoff)
        e_ij = jnp.where(edge_mask, e_ij, 0.0)
        e_i = jax.ops.segment_sum(e_ij, receivers, species.shape[0])
        return jnp.where(node_mask, e_i, 0.0)


@register("_al_pair", TinyHParams)
def _build(hp, cfg):
    return _TinyPair(cfg.cutoff, len(cfg.elements), hp.features, hp.n_basis)


MODEL = {"name": "_al_pair", "elements": ["Cu"], "cutoff": 4.0, "dtype": "float64", "features": 8, "n_basis": 4}


def emt_label(atoms: Atoms) -> Atoms:
    a = atoms.copy()
    a.calc = EMT()
    e, f = a.get_potential_energy(), a.get_forces()
    a.calc = SinglePointCalculator(a, energy=e, forces=f)
    return a


def cu_cluster(seed: int, n: int = 6, rattle: float = 0.15) -> Atoms:
    a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))[:n]
    a.pbc = False
    a.center(vacuum=4.0)
    a.rattle(rattle, seed=seed)
    return a


@pytest.fixture(scope="module")
def dataset():
    return [emt_label(cu_cluster(s)) for s in range(12)]


@pytest.fixture(scope="module")
def ensemble(dataset):
    from nnpes.active.ensemble import Ensemble

    return Ensemble.build(MODEL, 3, seed=0, dataset=dataset)


def test_committee_vmap_equals_loop_over_members(ensemble, dataset):
    structures = dataset[:3] + [bulk("Cu", "fcc", a=3.6).repeat(2)]
    preds = ensemble.predict(structures)
    for m, (a, p) in enumerate(zip(structures, preds)):
        members = [ensemble.member(k).predict(a) for k in range(ensemble.size)]
        e = np.array([q["energy"] for q in members])
        f = np.stack([q["forces"] for q in members])
        np.testing.assert_allclose(p["member_energy"], e, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(p["member_forces"], f, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(p["energy"], e.mean(), rtol=1e-10)
        np.testing.assert_allclose(p["forces"], f.mean(0), atol=1e-10)
        # DP-GEN definition, written out independently of the library
        per_atom = np.sqrt(np.mean(np.sum((f - f.mean(0)) ** 2, axis=-1), axis=0))
        np.testing.assert_allclose(p["force_std"], per_atom, atol=1e-10)
        assert p["max_force_std"] == pytest.approx(per_atom.max(), abs=1e-10)
        rel = per_atom / (np.linalg.norm(f.mean(0), axis=-1) + ensemble.nu)
        assert p["max_rel_force_std"] == pytest.approx(rel.max(), abs=1e-10)
        assert p["energy_std_per_atom"] == pytest.approx(np.std(e) / len(a), abs=1e-12)
        if m == 3:
            stress = np.mean([q["stress"] for q in members], axis=0)
            np.testing.assert_allclose(p["stress"], stress, atol=1e-10)
    assert ensemble.predict(structures[0])["max_force_std"] > 0  # different seeds disagree
