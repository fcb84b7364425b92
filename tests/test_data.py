"""nnpes.data: readers (extxyz, npz, ASE db, mlearn JSON), per-frame validation, splits."""

import json
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from nnpes.data import DataError, read_index_file, read_structures, split_indices, validate_structures

DATA = Path("/work/shared/data")
KCAL_MOL = units.kcal / units.mol


def _labelled(atoms):
    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.any():
        results["stress"] = atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


@pytest.fixture(scope="module")
def frames():
    """Three EMT-labelled frames: two rattled Cu crystals (with stress) and a molecule."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(2):
        a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
        a.positions += 0.05 * rng.standard_normal(a.positions.shape)
        a.set_cell(a.cell * (1.0 + 0.01 * k), scale_atoms=True)
        out.append(_labelled(a))
    m = molecule("CH4")
    m.positions += 0.02 * rng.standard_normal(m.positions.shape)
    out.append(_labelled(m))
    return out


def _same_labels(read, ref):
    assert len(read) == len(ref)
    for a, b in zip(read, ref):
        assert a.get_chemical_symbols() == b.get_chemical_symbols()
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
        np.testing.assert_allclose(a.get_potential_energy(), b.get_potential_energy(), rtol=1e-10)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-8)
        if b.pbc.any():
            np.testing.assert_allclose(a.cell.array, b.cell.array, atol=1e-8)
            np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-10)
        else:
            assert "stress" not in a.calc.results


def _assert_names(err, path, frame, *words):
    msg = str(err.value)
    assert str(path) in msg, msg
    if frame is not None:
        assert f"frame {frame}" in msg, msg
    for w in words:
        assert w in msg, msg


# ---- round trips --------------------------------------------------------------------------------


def test_extxyz_round_trip_and_index(tmp_path, frames):
    path = tmp_path / "set.extxyz"
    ase.io.write(path, frames)
    read = read_structures(path)
    _same_labels(read, frames)
    assert [a.info["frame"] for a in read] == [0, 1, 2]
    assert read[0].info["source"] == str(path)
    tail = read_structures(path, index="1:")
    assert [a.info["frame"] for a in tail] == [1, 2]
    _same_labels(tail, frames[1:])
    last = read_structures(path, index=-1)
    assert [a.info["frame"] for a in last] == [2]
    _same_labels(last, frames[2:])


def test_extxyz_custom_label_keys_and_units(tmp_path, frames):
    """MACE-style REF_energy/REF_forces fields, in Hartree and Hartree/Bohr."""
    path = tmp_path / "ref.xyz"
    plain = []
    for f in frames[:2]:
        a = f.copy()
        a.info["REF_energy"] = f.get_potential_energy() / units.Hartree
        a.arrays["REF_forces"] = f.get_forces() / (units.Hartree / units.Bohr)
        plain.append(a)
    ase.io.write(path, plain)
    read = read_structures(
        path, energy_key="REF_energy", forces_key="REF_forces", energy_unit="Hartree", force_unit="Hartree/Bohr"
    )
    for a, f in zip(read, frames):
        np.testing.assert_allclose(a.get_potential_energy(), f.get_potential_energy(), rtol=1e-9)
        # extxyz keeps 8 decimals of Ha/Bohr: 5e-7 eV/Å
        np.testing.assert_allclose(a.get_forces(), f.get_forces(), atol=1e-6)
        assert "REF_energy" not in a.info
    # a frame without REF_energy has no energy label: the file's other `energy` does not stand in
    del plain[1].info["REF_energy"]
    ase.io.write(path, plain)
    read = read_structures(path, energy_key="REF_energy", energy_unit="Hartree")
    assert "energy" not in read[1].calc.results and "free_energy" not in read[1].calc.results
    with pytest.raises(DataError) as err:
        read_structures(path, energy_key="REF_energy", require=("energy",))
    _assert_names(err, path, 1, "missing required label(s) ['energy']")
    npz = tmp_path / "h2.npz"
    np.savez(npz, z=[1, 1], R=np.array([[[0, 0, 0], [0, 0, 0.75]]]), E=[1.0])
    with pytest.raises(ValueError, match="energy_key"):
        read_structures(npz, energy_key="E")


def test_npz_both_key_styles_and_kcal_conversion(tmp_path):
    rng = np.random.default_rng(1)
    m, z = 4, np.array([8, 1, 1])
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    coords = base + 0.01 * rng.standard_normal((m, 3, 3))
    energies = -47000.0 + rng.standard_normal(m)
    forces = rng.standard_normal((m, 3, 3))
    new = tmp_path / "rmd17_like.npz"
    np.savez(new, nuclear_charges=z.astype(np.uint8), coords=coords, energies=energies, forces=forces)
    old = tmp_path / "md17_like.npz"
    np.savez(old, z=z, R=coords, E=energies[:, None], F=forces)  # old MD17: E is (M, 1)
    for path in (new, old):
        read = read_structures(path, energy_unit="kcal/mol")
        assert len(read) == m and [a.info["frame"] for a in read] == list(range(m))
        for k, a in enumerate(read):
            assert list(a.numbers) == [8, 1, 1] and not a.pbc.any()
            np.testing.assert_allclose(a.positions, coords[k])
            np.testing.assert_allclose(a.get_potential_energy(), energies[k] * units.kcal / units.mol, rtol=1e-12)
            np.testing.assert_allclose(a.get_forces(), forces[k] * units.kcal / units.mol, rtol=1e-12)
    # default unit is eV: no conversion (a file with rMD17's keys gets a warning about it)
    raw = read_structures(new, index="2")
    rmd17 = tmp_path / "rmd17_keys.npz"
    np.savez(rmd17, nuclear_charges=z, coords=coords, energies=energies, old_energies=energies)
    with pytest.warns(UserWarning, match="kcal/mol") as record:
        read_structures(rmd17)
    assert record[0].filename == __file__  # the warning points at the caller's line, not into nnpes
    assert raw[0].info["frame"] == 2
    np.testing.assert_allclose(raw[0].get_potential_energy(), energies[2])


def test_npz_stated_unit_must_match(tmp_path):
    path = tmp_path / "sgdml.npz"
    np.savez(path, z=[1, 1], R=np.array([[[0, 0, 0], [0, 0, 0.75]]]), E=[1.0], e_unit="kcal/mol")
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, None, "e_unit", "kcal/mol")
    assert read_structures(path, energy_unit="kcal/mol")[0].get_potential_energy() == pytest.approx(KCAL_MOL)


@pytest.mark.parametrize("suffix", [".db", ".json"])
def test_ase_database_round_trip(tmp_path, frames, suffix):
    path = tmp_path / f"set{suffix}"
    with ase.db.connect(str(path)) as db:
        for k, a in enumerate(frames):
            db.write(a, tag=k)
    read = read_structures(path)
    _same_labels(read, frames)
    assert [a.info["tag"] for a in read] == [0, 1, 2]
    _same_labels(read_structures(path, index="::2"), frames[::2])


def _mlearn_entry(atoms, energy, forces, virial):
    return {
        "structure": {
            "@class": "Structure",
            "lattice": {"matrix": atoms.cell.array.tolist()},
            "sites": [
                {"species": [{"element": s, "occu": 1}], "xyz": p.tolist()}
                for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)
            ],
        },
        "outputs": {"energy": energy, "forces": forces.tolist(), "virial_stress": virial},
        "group": "Elastic",
    }


def test_mlearn_json_units_order_and_sign(tmp_path):
    si = bulk("Si", "diamond", a=5.43)
    forces = np.arange(6.0).reshape(2, 3) * 0.1
    virial = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # kBar, xx yy zz xy yz zx, positive = compressive
    path = tmp_path / "si.json"
    path.write_text(json.dumps([_mlearn_entry(si, -10.8, forces, virial)]))
    (a,) = read_structures(path, require=("energy", "forces", "stress"))
    single = tmp_path / "one.json"  # a bare entry (not in a list) reads the same
    single.write_text(json.dumps(_mlearn_entry(si, -10.8, forces, virial)))
    np.testing.assert_allclose(read_structures(single)[0].get_stress(), a.get_stress())
    assert a.pbc.all() and a.info["mlearn_group"] == "Elastic"
    np.testing.assert_allclose(a.cell.array, si.cell.array)
    assert a.get_potential_energy() == -10.8
    np.testing.assert_allclose(a.get_forces(), forces)
    kbar = 0.1 * units.GPa
    # ase Voigt order xx yy zz yz xz xy; tensile positive
    np.testing.assert_allclose(a.get_stress(), -kbar * np.array([1.0, 2.0, 3.0, 5.0, 6.0, 4.0]))


def test_real_mlearn_si_test_set():
    path = DATA / "mlearn_si" / "test.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    read = read_structures(path, require=("energy", "forces", "stress"))
    assert len(read) == 25 and all(a.pbc.all() and a.get_chemical_symbols()[0] == "Si" for a in read)
    assert all(-5.6 < a.get_potential_energy() / len(a) < -4.5 for a in read)  # PBE Si, eV/atom
    by_desc = {a.info["mlearn_group"] + ":" + str(a.info["frame"]): a for a in read}
    assert len(by_desc) == 25
    raw = json.loads(path.read_text())
    for a, item in zip(read, raw):
        desc = item["description"]
        s = a.get_stress()
        if desc.endswith("mode 0, strain -0.06"):  # compressed along x: most compressive along x
            assert s[0] < s[1] < 0 and s[0] < -0.05  # eV/Å³ (about -10 GPa)
        if desc.endswith("mode 3, strain -0.06"):  # cell b tilted by -x: negative xy shear
            assert s[5] < -0.05 and abs(s[3]) < 1e-6 and abs(s[4]) < 1e-6


# ---- real data: units ---------------------------------------------------------------------------


def test_real_rmd17_aspirin_units():
    path = DATA / "rmd17" / "rmd17_aspirin_train_01.npz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    read = read_structures(path, index=":5", energy_unit="kcal/mol", require=("energy", "forces"))
    raw = np.load(path)
    assert len(read) == 5 and len(read[0]) == 21
    for k, a in enumerate(read):
        assert -407_000 < raw["energies"][k] < -406_000  # kcal/mol in the file (about -406,300)
        assert a.get_potential_energy() == pytest.approx(raw["energies"][k] * KCAL_MOL, rel=1e-12)
        assert -17_650 < a.get_potential_energy() < -17_600  # eV
        np.testing.assert_allclose(a.get_forces(), raw["forces"][k] * KCAL_MOL)
        np.testing.assert_allclose(a.positions, raw["coords"][k])


def test_real_3bpa_xyz():
    path = DATA / "3bpa" / "train_300K.xyz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    read = read_structures(path, index=":3", elements=["H", "C", "N", "O"], require=("energy", "forces"))
    assert len(read) == 3 and all(len(a) == 27 and not a.pbc.any() for a in read)
    assert all(-17_700 < a.get_potential_energy() < -17_600 for a in read)  # eV (ωB97X)
    assert "dihedrals" in read[0].info


# ---- bad input: each names file, frame and problem ----------------------------------------------


def _write_xyz(path, atoms_list):
    ase.io.write(path, atoms_list, format="extxyz")
    return path


def _h2(d=0.74, **labels):
    a = Atoms("H2", positions=[[0, 0, 0], [0, 0, d]])
    a.calc = SinglePointCalculator(a, **labels)
    return a


def _good(n=2):
    return [_h2(energy=-1.0, forces=np.zeros((2, 3))) for _ in range(n)]


def test_missing_file_names_path(tmp_path):
    for name in ("none.xyz", "none.npz", "none.db", "none.json"):
        with pytest.raises(FileNotFoundError, match=name):
            read_structures(tmp_path / name)
    assert not (tmp_path / "none.db").exists()  # no empty database created


@pytest.mark.parametrize(
    "what, bad, words",
    [
        ("positions", lambda a: a.positions.__setitem__((1, 2), np.nan), ["positions", "NaN"]),
        ("energy", lambda a: a.calc.results.__setitem__("energy", np.nan), ["energy", "NaN"]),
        ("forces", lambda a: a.calc.results["forces"].__setitem__((0, 1), np.inf), ["forces", "inf", "(0, 1)"]),
    ],
)
def test_non_finite_values(tmp_path, what, bad, words):
    frames = _good(3)
    bad(frames[2])
    path = _write_xyz(tmp_path / f"bad_{what}.xyz", frames)
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, 2, *words)


def test_non_finite_cell_and_stress(tmp_path):
    cu = bulk("Cu", cubic=True)
    good = cu.copy()
    good.calc = SinglePointCalculator(good, energy=-1.0, stress=np.zeros(6))
    bad_stress = cu.copy()
    bad_stress.calc = SinglePointCalculator(bad_stress, energy=-1.0, stress=np.array([0, 0, np.nan, 0, 0, 0.0]))
    path = _write_xyz(tmp_path / "stress.xyz", [good, bad_stress])
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, 1, "stress", "NaN")
    bad_cell = cu.copy()
    bad_cell.cell[0, 0] = np.inf
    with pytest.raises(DataError) as err:
        validate_structures([good, bad_cell], "cells.xyz")
    assert "cells.xyz, frame 1" in str(err.value) and "cell" in str(err.value)


def test_forces_shape_mismatch(tmp_path):
    frames = _good(2)
    frames[1].calc.results["forces"] = np.zeros((3, 3))
    with pytest.raises(DataError) as err:
        validate_structures(frames, "list.xyz")
    assert "list.xyz, frame 1" in str(err.value) and "forces have shape (3, 3), expected (2, 3)" in str(err.value)
    # in an npz the whole array is the wrong shape: file-level error naming the key
    path = tmp_path / "f.npz"
    np.savez(path, z=[1, 1], R=np.zeros((2, 2, 3)), F=np.zeros((2, 3, 3)))
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, None, "'F'", "(2, 3, 3)")


def test_npz_missing_key(tmp_path):
    path = tmp_path / "nokey.npz"
    np.savez(path, z=[1, 1], positions=np.zeros((2, 2, 3)))
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, None, "coords", "'R'", "positions")


@pytest.mark.parametrize("z", [0, 119])
def test_bad_atomic_number(tmp_path, z):
    path = tmp_path / f"z{z}.npz"
    coords = np.array([[[0, 0, 0], [0, 0, 1.0]]] * 3)
    charges = np.array([[1, 1], [1, 1], [1, z]])
    np.savez(path, nuclear_charges=charges, coords=coords)
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, 2, f"atomic number {z}", "atom 1")


def test_unreadable_extxyz_frame_is_named(tmp_path):
    good = tmp_path / "good.xyz"
    _write_xyz(good, _good(4))
    lines = good.read_text().splitlines()
    for name, line_no, text, words in [
        ("symbol.xyz", 2 * 4 + 2, "Xq 0 0 0 0 0 0", ["Xq", "unknown element symbol"]),
        ("number.xyz", 1 * 4 + 3, "H 0 0 abc 0 0 0", ["abc"]),
    ]:
        bad = list(lines)
        bad[line_no] = text
        path = tmp_path / name
        path.write_text("\n".join(bad) + "\n")
        with pytest.raises(DataError) as err:
            read_structures(path)
        _assert_names(err, path, line_no // 4, "could not be read as extxyz", *words)
    truncated = tmp_path / "truncated.xyz"
    truncated.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError) as err:
        read_structures(truncated)
    _assert_names(err, truncated, 3, "expected 2")
    with pytest.raises(IndexError, match="good.xyz: index 4 out of range"):
        read_structures(good, index=4)


def test_not_a_database_or_structure(tmp_path):
    path = tmp_path / "junk.db"
    path.write_text("this is not sqlite")
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, None, "could not be read as an ASE database")
    path = tmp_path / "junk.json"
    path.write_text(json.dumps([{"lattice": 1}]))
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, 0, "not a pymatgen Structure")


def test_data_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(DataError("a.xyz", "forces have shape (1, 3)", 5)))
    assert (err.source, err.frame, err.problem) == ("a.xyz", 5, "forces have shape (1, 3)")
    assert str(err) == "a.xyz, frame 5: forces have shape (1, 3)"


def test_unknown_symbol_in_json(tmp_path):
    si = bulk("Si", "diamond", a=5.43)
    entry = _mlearn_entry(si, -10.8, np.zeros((2, 3)), [0.0] * 6)
    entry["structure"]["sites"][1]["species"][0]["element"] = "Qq"
    path = tmp_path / "qq.json"
    path.write_text(json.dumps([_mlearn_entry(si, -10.8, np.zeros((2, 3)), [0.0] * 6), entry]))
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, 1, "site 1", "'Qq'")


def test_element_not_allowed(tmp_path):
    frames = _good(2) + [Atoms("HLi", positions=[[0, 0, 0], [0, 0, 1.6]])]
    path = _write_xyz(tmp_path / "li.xyz", frames)
    assert len(read_structures(path)) == 3
    with pytest.raises(DataError) as err:
        read_structures(path, elements=["H", "C"])
    _assert_names(err, path, 2, "'Li'", "atom 1")


def test_atoms_too_close(tmp_path):
    frames = _good(2) + [_h2(d=0.3, energy=-1.0)]
    path = _write_xyz(tmp_path / "close.xyz", frames)
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, 2, "atoms 0 and 1", "0.3000 Å", "min_distance=0.5")
    assert len(read_structures(path, min_distance=0.2)) == 3


def test_atoms_too_close_in_large_molecule():
    """Above the dense-check size the vesin neighbour list does the work: same answer."""
    rng = np.random.default_rng(5)
    grid = np.array([[i, j, k] for i in range(6) for j in range(6) for k in range(6)], float) * 1.2
    mol = Atoms(["C"] * len(grid), positions=grid + 0.05 * rng.standard_normal(grid.shape))
    assert len(mol) > 128
    assert validate_structures([mol], "big") == [mol]
    mol.positions[150] = mol.positions[3] + [0.1, 0.2, 0.0]
    with pytest.raises(DataError, match=r"big, frame 0: atoms 3 and 150 are 0.2236 Å apart"):
        validate_structures([mol], "big")


def test_atoms_too_close_through_periodic_image(tmp_path):
    # 0.2 Å apart only across the cell boundary: a naive (non-periodic) distance check misses it
    a = Atoms("Cu2", positions=[[0.1, 1, 1], [3.9, 1, 1]], cell=[4.0, 4.0, 4.0], pbc=True)
    far = Atoms("Cu2", positions=[[0.1, 1, 1], [2.1, 1, 1]], cell=[4.0, 4.0, 4.0], pbc=True)
    path = _write_xyz(tmp_path / "pbc.xyz", [far, a])
    with pytest.raises(DataError) as err:
        read_structures(path)
    _assert_names(err, path, 1, "0.2000 Å", "periodic image")
    a.pbc = False
    assert validate_structures([a], "molecule") == [a]


def test_missing_required_label(tmp_path):
    frames = _good(2) + [_h2(energy=-1.0)]
    path = _write_xyz(tmp_path / "noforces.xyz", frames)
    assert len(read_structures(path, require=("energy",))) == 3
    with pytest.raises(DataError) as err:
        read_structures(path, require=("energy", "forces"))
    _assert_names(err, path, 2, "missing required label(s) ['forces']")
    with pytest.raises(ValueError, match="unknown label"):
        read_structures(path, require=("energies",))


def test_stress_on_molecule_and_empty_frame():
    m = _h2(energy=-1.0)
    m.calc.results["stress"] = np.zeros(6)
    with pytest.raises(DataError, match=r"src, frame 0: stress given for a non-periodic"):
        validate_structures([m], "src")
    with pytest.raises(DataError, match=r"src, frame 7: structure has no atoms"):
        validate_structures([Atoms()], "src", frame_ids=[7])


def test_error_names_file_frame_with_index(tmp_path):
    """With an index, the frame in the message is the frame's number in the file."""
    frames = _good(6)
    frames[4].positions[0, 0] = np.nan
    path = _write_xyz(tmp_path / "idx.xyz", frames)
    assert len(read_structures(path, index=":4")) == 4
    with pytest.raises(DataError) as err:
        read_structures(path, index="3:")
    _assert_names(err, path, 4, "positions")
    with pytest.raises(DataError) as err:
        read_structures(path, index="-3:")
    _assert_names(err, path, 4, "positions")


# ---- splits -------------------------------------------------------------------------------------


def test_split_deterministic_disjoint_complete():
    a = split_indices(100, train=60, valid=0.2, seed=3)
    b = split_indices(100, train=60, valid=0.2, seed=3)
    c = split_indices(100, train=60, valid=0.2, seed=4)
    for k in ("train", "valid", "test"):
        np.testing.assert_array_equal(a[k], b[k])
        assert a[k].dtype == np.int64 and np.all(np.diff(a[k]) > 0)
    assert [len(a[k]) for k in ("train", "valid", "test")] == [60, 20, 20]
    everything = np.concatenate([a["train"], a["valid"], a["test"]])
    np.testing.assert_array_equal(np.sort(everything), np.arange(100))
    assert not np.array_equal(a["train"], c["train"])
    bigger = split_indices(100, train=70, valid=0, seed=3)
    smaller = split_indices(100, train=30, valid=0, seed=3)
    assert set(smaller["train"]) <= set(bigger["train"])
    # fractions are rounded down, so fractions summing to 1 always fit
    d = split_indices(7, train=0.5, valid=0.5, test=0.0)
    assert len(d["train"]) == 3 and len(d["valid"]) == 3 and len(d["test"]) == 0


def test_split_errors():
    with pytest.raises(ValueError, match="only 10 of 100"):
        split_indices(100, train=90, valid=20)
    with pytest.raises(ValueError, match="fraction 1.5"):
        split_indices(10, train=1.5, valid=0)
    with pytest.raises(TypeError):
        split_indices(10, train=True, valid=1)


def test_run_splits_and_what_a_finished_run_is_evaluated_on(tmp_path):
    """``load_splits``: a split-off validation set, a separate test file used whole, and the held-out
    set of a finished run (test, else validation)."""
    from nnpes.config.training import DataConfig
    from nnpes.training.data import load_splits

    pool = [_h2(0.70 + 0.01 * k, energy=-float(k), forces=np.zeros((2, 3))) for k in range(10)]
    train = _write_xyz(tmp_path / "train.extxyz", pool)
    test = _write_xyz(tmp_path / "test.extxyz", [_h2(1.5, energy=5.0, forces=np.zeros((2, 3)))] * 3)
    no_test = load_splits(DataConfig(train=str(train), n_valid=4, split_seed=1), ["H"])
    assert no_test.sizes() == {"train": 6, "valid": 4, "test": 0}
    energies = sorted(a.get_potential_energy() for a in no_test.train + no_test.valid)
    assert energies == [-float(k) for k in range(9, -1, -1)]  # disjoint and complete
    assert no_test.held_out() == ("valid", no_test.valid)
    both = load_splits(DataConfig(train=str(train), test=str(test), n_valid=2), ["H"])
    assert both.sizes() == {"train": 8, "valid": 2, "test": 3}
    name, held_out = both.held_out()
    assert name == "test" and [a.get_potential_energy() for a in held_out] == [5.0] * 3


def test_split_from_index_files(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("# frames used for training\n5\n1\n\n7\n")
    valid = tmp_path / "valid.npy"
    np.save(valid, np.array([0, 2]))
    np.testing.assert_array_equal(read_index_file(train), [5, 1, 7])
    s = split_indices(10, train=train, valid=valid)
    np.testing.assert_array_equal(s["train"], [1, 5, 7])
    np.testing.assert_array_equal(s["valid"], [0, 2])
    np.testing.assert_array_equal(s["test"], [3, 4, 6, 8, 9])
    s2 = split_indices(10, train=train, valid=2, test=1, seed=5)
    assert not set(s2["valid"]) & {1, 5, 7} and len(s2["valid"]) == 2 and len(s2["test"]) == 1

    with pytest.raises(DataError, match="index 1 is in both train and valid"):
        split_indices(10, train=train, valid=[1, 3])
    with pytest.raises(DataError, match=r"train.txt: index 7 out of range for 6"):
        split_indices(6, train=train, valid=1)
    bad = tmp_path / "bad.txt"
    bad.write_text("1\n2\nthree\n")
    with pytest.raises(DataError, match=r"bad.txt: line 3: 'three' is not an integer"):
        read_index_file(bad)
    dup = tmp_path / "dup.txt"
    dup.write_text("1\n2\n1\n")
    with pytest.raises(DataError, match="index 1 appears 2 times"):
        read_index_file(dup)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_index_file(tmp_path / "missing.txt")
