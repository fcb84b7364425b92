"""nnpes.graph.stats.compute_stats: E0 least squares, force RMS, average neighbour count."""

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.neighborlist import neighbor_list as ase_neighbor_list

from nnpes.data import DataError, read_structures
from nnpes.graph.stats import compute_stats

E0_TRUE = {"H": -13.6, "C": -1029.5, "O": -2041.0}


def _random_molecule(rng, counts, noise=0.0):
    """Atoms on a jittered grid (min spacing > 1 Å) with E = Σ E0 + noise and random forces."""
    symbols = [s for s, c in counts.items() for _ in range(c)]
    rng.shuffle(symbols)
    n = len(symbols)
    grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(3)], float)[:n] * 1.5
    atoms = Atoms(symbols, positions=grid + 0.1 * rng.standard_normal((n, 3)))
    energy = sum(E0_TRUE[s] for s in symbols) + noise * rng.standard_normal()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=rng.standard_normal((n, 3)))
    return atoms


def test_e0_recovers_per_element_energies():
    rng = np.random.default_rng(0)
    data = [
        _random_molecule(rng, {"H": int(rng.integers(1, 8)), "C": int(rng.integers(0, 5)), "O": int(rng.integers(0, 4))})
        for _ in range(30)
    ]
    stats = compute_stats(data, ["H", "C", "O", "N"], cutoff=2.0)
    for s, e in E0_TRUE.items():
        assert stats.e0[s] == pytest.approx(e, abs=1e-8)
    assert stats.e0["N"] == 0.0  # absent element: minimum norm
    assert stats.energy_residual_rms < 1e-9
    assert stats.n_structures == 30


def test_e0_with_noise_is_least_squares():
    rng = np.random.default_rng(1)
    data = [_random_molecule(rng, {"H": int(rng.integers(1, 8)), "O": int(rng.integers(1, 4))}, noise=0.05) for _ in range(40)]
    stats = compute_stats(data, ["H", "O"], cutoff=2.0)
    counts = np.array([[a.get_chemical_symbols().count(s) for s in ("H", "O")] for a in data], float)
    energies = np.array([a.get_potential_energy() for a in data])
    # normal equations hold at the least-squares solution
    e0 = np.array([stats.e0["H"], stats.e0["O"]])
    np.testing.assert_allclose(counts.T @ (energies - counts @ e0), 0.0, atol=1e-6)
    assert stats.e0["H"] == pytest.approx(E0_TRUE["H"], abs=0.05)
    assert 0 < stats.energy_residual_rms < 0.05


def test_single_composition_gives_minimum_norm_e0():
    """One molecule (rMD17-like): only Σ c_Z E0_Z is identifiable; E0 = c ⟨E⟩ / |c|²."""
    rng = np.random.default_rng(2)
    counts = {"H": 4, "C": 2, "O": 1}
    data = [_random_molecule(rng, counts, noise=0.1) for _ in range(20)]
    stats = compute_stats(data, ["H", "C", "O"], cutoff=2.0)
    c = np.array([4.0, 2.0, 1.0])
    mean_e = np.mean([a.get_potential_energy() for a in data])
    e0 = np.array([stats.e0[s] for s in ("H", "C", "O")])
    np.testing.assert_allclose(e0, c * mean_e / (c @ c), rtol=1e-10)
    assert c @ e0 == pytest.approx(mean_e, rel=1e-12)
    assert np.isfinite(e0).all()


def test_force_rms_and_neighbours_periodic():
    rng = np.random.default_rng(3)
    frames = []
    for k in range(3):
        a = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2)) if k < 2 else bulk("Cu", "fcc", a=3.6, cubic=True)
        a.positions += 0.05 * rng.standard_normal(a.positions.shape)
        a.calc = SinglePointCalculator(a, energy=-3.0 * len(a), forces=rng.standard_normal((len(a), 3)))
        frames.append(a)
    frames.append(Atoms("Cu", cell=[10, 10, 10], pbc=True))  # no label, no neighbour within the cutoff
    cutoff = 3.0
    stats = compute_stats(frames, ["Cu"], cutoff)
    forces = np.concatenate([a.get_forces().ravel() for a in frames[:3]])
    assert stats.force_rms == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    # ase's own neighbour list as the reference (fcc: 12 neighbours at a/√2 = 2.55 Å)
    n_pairs = sum(len(ase_neighbor_list("i", a, cutoff)) for a in frames)
    n_atoms = sum(len(a) for a in frames)
    assert stats.avg_num_neighbors == pytest.approx(n_pairs / n_atoms)
    assert 10 < stats.avg_num_neighbors < 12
    assert stats.e0["Cu"] == pytest.approx(-3.0)


def test_unknown_element_names_source_and_frame(tmp_path):
    path = tmp_path / "hli.xyz"
    import ase.io

    ase.io.write(path, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]]), Atoms("LiH", positions=[[0, 0, 0], [0, 0, 1.6]])])
    data = read_structures(path)
    with pytest.raises(DataError) as err:
        compute_stats(data, ["H"], cutoff=2.0)
    assert f"{path}, frame 1" in str(err.value) and "'Li'" in str(err.value)


def test_real_rmd17_stats():
    path = Path("/work/shared/data/rmd17/rmd17_ethanol_train_01.npz")
    if not path.exists():
        pytest.skip(f"{path} not present")
    data = read_structures(path, index=":200", energy_unit="kcal/mol", require=("energy", "forces"))
    stats = compute_stats(data, ["H", "C", "O"], cutoff=5.0)
    c = np.array([6.0, 2.0, 1.0])
    e0 = np.array([stats.e0[s] for s in ("H", "C", "O")])
    mean_e = np.mean([a.get_potential_energy() for a in data])
    assert c @ e0 == pytest.approx(mean_e, rel=1e-10)
    assert 0.5 < stats.force_rms < 2.0  # eV/Å: ethanol at 500 K, PBE (about 1 eV/Å)
    assert stats.avg_num_neighbors == pytest.approx(8.0)  # 9 atoms, all within 5 Å of each other
    assert stats.energy_residual_rms < 0.05  # eV/atom: thermal fluctuation about the mean
