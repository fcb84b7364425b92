"""The MD driver used by ``nnpes md``: blocks of steps under one jitted ``lax.scan``, output
between blocks, and neighbour-list overflow handled by reallocating and redoing the block."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from nnpes.md.functions import md_functions
from nnpes.md.integrators import (
    Integrator, MDState, kinetic_energy, langevin, maxwell_boltzmann, nose_hoover_chain, run_steps,
    velocity_verlet,
)
from nnpes.md.integrators import temperature as temperature_of
from nnpes.md.io import ThermoLog, TrajectoryWriter

ENSEMBLES = ("nve", "nvt")
THERMOSTATS = ("langevin", "nose-hoover")


@dataclass
class MDResult:
    """atoms: final structure (positions, velocities, energy, forces); thermo: the logged columns;
    ns_per_day excludes the first block (compilation); n_reallocations: neighbour-list overflows."""

    atoms: Atoms
    state: MDState
    steps: int
    wall_s: float
    ns_per_day: float
    n_reallocations: int
    thermo: dict = field(default_factory=dict)


def make_integrator(energy_and_forces, ensemble: str, timestep: float, temperature_K: float,
                    thermostat: str = "langevin", friction: float = 0.01, tau: float = 100.0) -> Integrator:
    """``ensemble`` nve | nvt; for nvt ``thermostat`` langevin (friction 1/fs) | nose-hoover (tau fs)."""
    if ensemble == "nve":
        return velocity_verlet(energy_and_forces, timestep)
    if ensemble != "nvt":
        raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")
    if temperature_K <= 0:
        raise ValueError(f"nvt needs a temperature > 0 K, got {temperature_K}")
    if thermostat == "langevin":
        return langevin(energy_and_forces, timestep, temperature_K, friction)
    if thermostat == "nose-hoover":
        return nose_hoover_chain(energy_and_forces, timestep, temperature_K, tau)
    raise ValueError(f"unknown thermostat {thermostat!r}; choose one of {THERMOSTATS}")


def initial_velocities(atoms: Atoms, temperature_K: float, seed: int) -> np.ndarray:
    """(N,3) Å/fs: the structure's own velocities if it has any, else Maxwell–Boltzmann."""
    if atoms.has("momenta") and np.any(atoms.get_momenta()):
        return atoms.get_velocities() * units.fs
    return maxwell_boltzmann(atoms.get_masses(), temperature_K, seed)


def run_md(potential, atoms: Atoms, *, steps: int, timestep: float = 0.5, ensemble: str = "nve",
           temperature: float = 300.0, thermostat: str = "langevin", friction: float = 0.01,
           tau: float = 100.0, out_dir=None, thermo_every: int = 10, traj_every: int = 100,
           seed: int = 0, skin: float = 0.5, capacity_multiplier: float = 1.25,
           progress: bool = False) -> MDResult:
    """Run ``steps`` steps of ``timestep`` fs from ``atoms``; writes ``thermo.log`` and
    ``trajectory.extxyz`` to ``out_dir`` (if given) every thermo_every / traj_every steps."""
    if steps < 0 or timestep <= 0 or thermo_every < 1:
        raise ValueError(f"need steps >= 0, timestep > 0 fs, thermo_every >= 1; got {steps}, {timestep}, {thermo_every}")
    if traj_every % thermo_every:
        raise ValueError(f"traj_every ({traj_every}) must be a multiple of thermo_every ({thermo_every})")
    neighbor_fn, energy_fn = md_functions(potential, atoms, skin=skin, capacity_multiplier=capacity_multiplier)
    dtype = energy_fn.dtype
    integrator = make_integrator(energy_fn.energy_and_forces, ensemble, timestep, temperature,
                                 thermostat, friction, tau)
    positions = jnp.asarray(atoms.positions, dtype)
    masses = jnp.asarray(atoms.get_masses(), dtype)
    velocities = jnp.asarray(initial_velocities(atoms, temperature, seed), dtype)
    nbrs = neighbor_fn.allocate(positions)
    state = jax.jit(integrator.init_fn)(positions, velocities, masses, nbrs, jax.random.PRNGKey(seed))
    conserved = integrator.conserved_energy or (lambda s: s.energy + kinetic_energy(s.velocities, s.masses))
    block_fn = jax.jit(lambda st, nb, n: run_steps(integrator.step_fn, st, nb, n), static_argnums=2)
    observe = jax.jit(lambda s: (s.energy, kinetic_energy(s.velocities, s.masses),
                                 temperature_of(s.velocities, s.masses), conserved(s)))

    out = Path(out_dir) if out_dir is not None else None
    thermo_log = traj = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        thermo_log = ThermoLog(out / "thermo.log")
        traj = TrajectoryWriter(out / "trajectory.extxyz", atoms)
    rows = []

    def record(step):
        e_pot, e_kin, temp, e_cons = (float(x) for x in observe(state))
        if not np.isfinite(e_pot + e_kin):
            raise FloatingPointError(f"MD blew up at step {step}: E_pot={e_pot} eV, E_kin={e_kin} eV")
        rows.append((step, step * timestep, temp, e_pot, e_kin, e_pot + e_kin, e_cons))
        if thermo_log:
            thermo_log.write(step, step * timestep, temp, e_pot, e_kin, e_cons)
        if traj and step % traj_every == 0:
            traj.write(step, step * timestep, state.positions, state.velocities, e_pot, state.forces)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="step", desc=f"md {ensemble}")
    n_realloc, done = 0, 0
    start = time.perf_counter()
    t_first = None
    try:
        record(0)
        while done < steps:
            n = min(thermo_every, steps - done)
            new_state, new_nbrs = block_fn(state, nbrs, n)
            if bool(new_nbrs.did_buffer_overflow):
                # The block used a list too small for it: rebuild bigger from the block's start and redo it.
                nbrs = neighbor_fn.allocate(state.positions, previous=new_nbrs)
                n_realloc += 1
                continue
            state, nbrs = new_state, new_nbrs
            done += n
            record(done)
            if t_first is None:
                t_first = (time.perf_counter(), done)
            if bar:
                bar.update(n)
    finally:
        for f in (thermo_log, traj, bar):
            if f is not None:
                f.close()
    wall = time.perf_counter() - start
    if t_first is not None and done > t_first[1]:
        timed_steps, timed_wall = done - t_first[1], time.perf_counter() - t_first[0]
    else:
        timed_steps, timed_wall = done, wall
    ns_per_day = timed_steps * timestep * 1e-6 / max(timed_wall, 1e-12) * 86400.0

    final = atoms.copy()
    final.positions = np.asarray(state.positions, np.float64)
    final.set_velocities(np.asarray(state.velocities, np.float64) / units.fs)
    final.calc = SinglePointCalculator(final, energy=float(state.energy), forces=np.asarray(state.forces, np.float64))
    thermo = {name: np.array([r[k] for r in rows]) for k, name in enumerate(
        ("step", "time_fs", "T_K", "E_pot_eV", "E_kin_eV", "E_tot_eV", "E_conserved_eV"))}
    return MDResult(final, state, done, wall, ns_per_day, n_realloc, thermo)
