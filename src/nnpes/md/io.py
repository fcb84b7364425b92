"""MD output written as it goes (flushed after every record, so a killed run keeps what it wrote):
a whitespace thermo log and an extended-XYZ trajectory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

THERMO_COLUMNS = ("step", "time_fs", "T_K", "E_pot_eV", "E_kin_eV", "E_tot_eV", "E_conserved_eV")
# Periodic cells add these: volume, pressure and the stress tensor (Voigt order xx yy zz yz xz xy),
# model stress plus the kinetic term, ase's sign (positive is tensile; P = −trace/3).
PRESSURE_COLUMNS = ("V_A3", "P_GPa", "Sxx_GPa", "Syy_GPa", "Szz_GPa", "Syz_GPa", "Sxz_GPa", "Sxy_GPa")


class _OutputFile:
    """A file opened for writing at construction; a context manager that closes it."""

    def __init__(self, path):
        self.path = Path(path)
        self._fh = open(self.path, "w")

    def close(self):
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ThermoLog(_OutputFile):
    """A ``# settings`` line (``header``, if given), a ``# columns`` line (``THERMO_COLUMNS``, then
    ``extra_columns``), then one row per ``write``; read back with ``read_thermo``."""

    def __init__(self, path, header: str | None = None, extra_columns: tuple = ()):
        super().__init__(path)
        if header:
            self._fh.write("# " + header.replace("\n", " ") + "\n")
        self._fh.write("# " + " ".join(THERMO_COLUMNS + tuple(extra_columns)) + "\n")
        self._fh.flush()

    def write(self, step: int, time_fs: float, temperature: float, e_pot: float, e_kin: float,
              e_conserved: float, *extra: float) -> None:
        tail = "".join(f" {x:.8g}" for x in extra)
        self._fh.write(
            f"{step:d} {time_fs:.4f} {temperature:.4f} {e_pot:.10f} {e_kin:.10f} {e_pot + e_kin:.10f} "
            f"{e_conserved:.10f}{tail}\n"
        )
        self._fh.flush()


def read_thermo(path) -> dict[str, np.ndarray]:
    """The thermo log as columns (arrays) keyed by the names of its ``# step ...`` line
    (``THERMO_COLUMNS``, and ``PRESSURE_COLUMNS`` for periodic cells)."""
    names = THERMO_COLUMNS
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            if line[1:].split()[:1] == ["step"]:
                names = tuple(line[1:].split())
    data = np.loadtxt(path, ndmin=2)
    return {name: data[:, k] for k, name in enumerate(names)}


class TrajectoryWriter(_OutputFile):
    """Appends frames (positions Å, velocities, energy eV, forces eV/Å) to an extxyz file."""

    def __init__(self, path, template: Atoms):
        super().__init__(path)
        self.template = template

    def write(self, step: int, time_fs: float, positions, velocities_A_per_fs, energy: float, forces,
              cell=None) -> None:
        """``cell`` (3,3) Å: the frame's, in variable-cell runs (default: the template's)."""
        from ase import units

        atoms = self.template.copy()
        if cell is not None:
            atoms.cell = np.asarray(cell, np.float64)
        atoms.positions = np.asarray(positions, np.float64)
        atoms.set_velocities(np.asarray(velocities_A_per_fs, np.float64) / units.fs)  # ase: Å per ase time
        atoms.info.update(step=int(step), time_fs=float(time_fs))
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=np.asarray(forces, np.float64))
        write(self._fh, atoms, format="extxyz")
        self._fh.flush()
