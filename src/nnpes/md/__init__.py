"""Molecular dynamics with nnpes potentials.

- ``md_functions(potential, atoms)`` → ``neighbor_fn, energy_fn`` in jax-md's conventions
  (``energy_fn.force_fn`` / ``force_fn(energy_fn)`` for forces); they drop into ``jax_md.simulate``.
- Integrators (pure ``init_fn``/``step_fn``): ``velocity_verlet`` (NVE), ``langevin`` (BAOAB, NVT),
  ``nose_hoover_chain`` (NVT); ``run_steps`` runs a block under ``lax.scan``.
- ``run_md``: the driver behind ``nnpes md`` (thermo log, extxyz trajectory, overflow handling).
Units: Å, fs, amu, eV, K; velocities in Å/fs.
"""

from nnpes.md.functions import EnergyFn, MDFunctions, check_elements, force_fn, md_functions
from nnpes.md.integrators import (
    ACCEL, Integrator, MDState, kinetic_energy, langevin, maxwell_boltzmann, nose_hoover_chain,
    run_steps, temperature, velocity_verlet,
)
from nnpes.md.io import THERMO_COLUMNS, ThermoLog, TrajectoryWriter, read_thermo
from nnpes.graph.verlet import NeighborFn, VerletList, bucket_size, neighbor_list_fn
from nnpes.md.run import MDResult, make_integrator, run_md

__all__ = [
    "ACCEL", "EnergyFn", "Integrator", "MDFunctions", "MDResult", "MDState", "NeighborFn", "VerletList",
    "THERMO_COLUMNS", "ThermoLog", "TrajectoryWriter", "bucket_size", "check_elements", "force_fn",
    "kinetic_energy", "langevin", "make_integrator", "maxwell_boltzmann", "md_functions",
    "neighbor_list_fn", "nose_hoover_chain", "read_thermo", "run_md", "run_steps", "temperature",
    "velocity_verlet",
]
