"""Molecular dynamics with nnpes potentials.

- ``md_functions(potential, atoms)`` → ``neighbor_fn, energy_fn`` in jax-md's conventions
  (``energy_fn.force_fn`` / ``force_fn(energy_fn)`` for forces); they drop into ``jax_md.simulate``.
- Integrators (pure ``init_fn``/``step_fn``): ``velocity_verlet`` (NVE), ``langevin`` (BAOAB, NVT),
  ``nose_hoover_chain`` (NVT), ``npt_langevin`` (BAOAB + stochastic cell rescaling, NPT);
  ``run_steps`` runs a block under ``lax.scan``.
- ``md_functions(ensemble, atoms)``: the same with a ``CommitteeEnergyFn`` (committee mean, and
  ``members`` for every member's energy and forces), which committee exploration integrates.
- ``run_md(pot, atoms, MDConfig(...))`` (or keyword settings): the driver behind ``nnpes md``
  (thermo log, extxyz trajectory; stops with ``MDInstability`` when the run blows up: temperature,
  conserved-energy drift, atoms too close or flying apart); ``run_blocks``: its block loop with
  overflow → reallocate → redo, shared with committee exploration.
- ``nnpes.md.lammps.attach(lmp, pot, type_elements)``: the potential as LAMMPS's forces, energy and
  virial through ``fix external`` (one MPI rank; ``pip install nnpes[lammps]``; imported on its own).
Units: Å, fs, amu, eV, K; velocities in Å/fs.
"""

from nnpes.md.functions import (
    CommitteeEnergyFn, CommitteeOutput, EnergyFn, MDFunctions, check_elements, force_fn, md_functions,
)
from nnpes.md.integrators import (
    ACCEL, BarostatState, Integrator, MDState, kinetic_energy, kinetic_stress, langevin, maxwell_boltzmann,
    nose_hoover_chain, npt_langevin, run_steps, temperature, velocity_verlet,
)
from nnpes.md.io import PRESSURE_COLUMNS, THERMO_COLUMNS, ThermoLog, TrajectoryWriter, read_thermo
from nnpes.graph.verlet import NeighborFn, VerletList, bucket_size, neighbor_list_fn
from nnpes.md.run import (
    BlockRun, MDConfig, MDInstability, MDResult, MDTiming, make_integrator, run_blocks, run_md,
)

__all__ = [
    "ACCEL", "BarostatState", "BlockRun", "CommitteeEnergyFn", "CommitteeOutput", "EnergyFn", "Integrator", "MDConfig", "MDInstability",
    "MDFunctions", "MDResult", "MDState", "MDTiming", "NeighborFn", "VerletList",
    "PRESSURE_COLUMNS", "THERMO_COLUMNS", "ThermoLog", "TrajectoryWriter", "bucket_size", "check_elements", "force_fn",
    "kinetic_energy", "kinetic_stress", "langevin", "make_integrator", "maxwell_boltzmann", "md_functions",
    "neighbor_list_fn", "nose_hoover_chain", "npt_langevin", "read_thermo", "run_blocks", "run_md", "run_steps", "temperature",
    "velocity_verlet",
]
