"""MD output written as it goes (flushed after every record, so a killed run keeps what it wrote):
a whitespace thermo log and an extended-XYZ trajectory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

THERMO_COLUMNS = ("step", "time_fs", "T_K", "E_pot_eV", "E_kin_eV", "E_tot_eV", "E_conserved_eV")


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
    """Columns ``THERMO_COLUMNS``; read back with ``read_thermo``."""

    def __init__(self, path):
        super().__init__(path)
        self._fh.write("# " + " ".join(THERMO_COLUMNS) + "\n")
        self._fh.flush()

    def write(self, step: int, time_fs: float, temperature: float, e_pot: float, e_kin: float,
              e_conserved: float) -> None:
        self._fh.write(
            f"{step:d} {time_fs:.4f} {temperature:.4f} {e_pot:.10f} {e_kin:.10f} {e_pot + e_kin:.10f} "
            f"{e_conserved:.10f}\n"
        )
        self._fh.flush()


def read_thermo(path) -> dict[str, np.ndarray]:
    """The thermo log as columns (arrays) keyed by ``THERMO_COLUMNS``."""
    data = np.loadtxt(path, ndmin=2)
    return {name: data[:, k] for k, name in enumerate(THERMO_COLUMNS)}


class TrajectoryWriter(_OutputFile):
    """Appends frames (positions Å, velocities, energy eV, forces eV/Å) to an extxyz file."""

    def __init__(self, path, template: Atoms):
        super().__init__(path)
        self.template = template

    def write(self, step: int, time_fs: float, positions, velocities_A_per_fs, energy: float, forces) -> None:
        from ase import units

        atoms = self.template.copy()
        atoms.positions = np.asarray(positions, np.float64)
        atoms.set_velocities(np.asarray(velocities_A_per_fs, np.float64) / units.fs)  # ase: Å per ase time
        atoms.info.update(step=int(step), time_fs=float(time_fs))
        atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=np.asarray(forces, np.float64))
        write(self._fh, atoms, format="extxyz")
        self._fh.flush()
