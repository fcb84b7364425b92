"""The MD driver used by ``nnpes md`` and by committee exploration: blocks of steps under one
jitted ``lax.scan`` (``run_blocks``), output between blocks, and neighbour-list overflow handled
by reallocating and redoing the block."""

from __future__ import annotations

import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


@dataclass(frozen=True)
class MDConfig:
    """Settings of ``run_md``: ``steps`` of ``timestep`` fs; ``ensemble`` nve | nvt at
    ``temperature`` K with ``thermostat`` langevin (``friction`` 1/fs) | nose-hoover (``tau`` fs);
    a thermo line every ``thermo_every`` steps (also the block length), a trajectory frame every
    ``traj_every``; ``seed`` for velocities and noise; Verlet ``skin`` Å and buffer head room
    ``capacity_multiplier``."""

    steps: int
    timestep: float = 0.5
    ensemble: str = "nve"
    temperature: float = 300.0
    thermostat: str = "langevin"
    friction: float = 0.01
    tau: float = 100.0
    thermo_every: int = 10
    traj_every: int = 100
    seed: int = 0
    skin: float = 0.5
    capacity_multiplier: float = 1.25

    def __post_init__(self):
        if self.steps < 0 or self.timestep <= 0 or self.thermo_every < 1:
            raise ValueError(f"need steps >= 0, timestep > 0 fs, thermo_every >= 1; got {self.steps}, "
                             f"{self.timestep}, {self.thermo_every}")
        if self.traj_every % self.thermo_every:
            raise ValueError(f"traj_every ({self.traj_every}) must be a multiple of thermo_every ({self.thermo_every})")


@dataclass
class BlockRun:
    """What ``run_blocks`` ends with: the state and list after ``steps_done`` steps."""

    state: object
    nbrs: object
    steps_done: int
    n_reallocations: int


# Consecutive overflows of one block before giving up: each reallocation fits every count the
# failed attempt needed, so more than a few means the atoms blew apart or collapsed.
MAX_REALLOCATIONS_PER_BLOCK = 4


def run_blocks(block_fn: Callable, state, nbrs, neighbor_fn, steps: int, block: int,
               on_block: Callable | None = None) -> BlockRun:
    """Advance ``steps`` steps in blocks of ``block``: ``block_fn(state, nbrs, n) -> (state, nbrs,
    out)`` (jitted, ``n`` static); ``state.positions`` (N,3) Å. A block whose list overflowed is
    redone from its start with a list reallocated to fit. After each accepted block
    ``on_block(state, out, done, n)`` runs; returning False stops early."""
    done, n_realloc, retries = 0, 0, 0
    while done < steps:
        n = min(block, steps - done)
        new_state, new_nbrs, out = block_fn(state, nbrs, n)
        if bool(new_nbrs.did_buffer_overflow):
            retries += 1
            if retries > MAX_REALLOCATIONS_PER_BLOCK:
                raise FloatingPointError(
                    f"MD blew up after step {done}: the neighbour list overflowed {retries} times in one "
                    "block; lower the timestep or check the structure")
            nbrs = neighbor_fn.allocate(state.positions, previous=new_nbrs)
            n_realloc += 1
            continue
        state, nbrs, retries = new_state, new_nbrs, 0
        done += n
        if on_block is not None and on_block(state, out, done, n) is False:
            break
    return BlockRun(state, nbrs, done, n_realloc)


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


def run_md(potential, atoms: Atoms, config: MDConfig | None = None, *, out_dir=None, progress: bool = False,
           **settings) -> MDResult:
    """Run ``config.steps`` steps of ``config.timestep`` fs from ``atoms``; writes ``thermo.log``
    and ``trajectory.extxyz`` to ``out_dir`` (if given) every thermo_every / traj_every steps.
    ``settings`` are MDConfig fields (``run_md(pot, atoms, steps=1000, timestep=0.5)``); given with
    ``config`` they override it."""
    cfg = MDConfig(**settings) if config is None else dataclasses.replace(config, **settings)
    neighbor_fn, energy_fn = md_functions(potential, atoms, skin=cfg.skin, capacity_multiplier=cfg.capacity_multiplier)
    dtype = energy_fn.dtype
    integrator = make_integrator(energy_fn.energy_and_forces, cfg.ensemble, cfg.timestep, cfg.temperature,
                                 cfg.thermostat, cfg.friction, cfg.tau)
    positions = jnp.asarray(atoms.positions, dtype)
    masses = jnp.asarray(atoms.get_masses(), dtype)
    velocities = jnp.asarray(initial_velocities(atoms, cfg.temperature, cfg.seed), dtype)
    nbrs = neighbor_fn.allocate(positions)
    state = jax.jit(integrator.init_fn)(positions, velocities, masses, nbrs, jax.random.PRNGKey(cfg.seed))
    block_fn = jax.jit(lambda st, nb, n: (*run_steps(integrator.step_fn, st, nb, n), None), static_argnums=2)
    out = Path(out_dir) if out_dir is not None else None
    log = _MDLog(integrator, cfg, atoms, out, progress)
    start = time.perf_counter()
    try:
        log.record(state, 0)
        run = run_blocks(block_fn, state, nbrs, neighbor_fn, cfg.steps, cfg.thermo_every,
                         lambda st, _, done, n: log.record(st, done, n))
    finally:
        log.close()
    wall = time.perf_counter() - start
    state = run.state
    final = atoms.copy()
    final.positions = np.asarray(state.positions, np.float64)
    final.set_velocities(np.asarray(state.velocities, np.float64) / units.fs)
    final.calc = SinglePointCalculator(final, energy=float(state.energy), forces=np.asarray(state.forces, np.float64))
    return MDResult(final, state, run.steps_done, wall, log.ns_per_day(run.steps_done, wall),
                    run.n_reallocations, log.thermo())


THERMO_KEYS = ("step", "time_fs", "T_K", "E_pot_eV", "E_kin_eV", "E_tot_eV", "E_conserved_eV")


class _MDLog:
    """run_md's output between blocks: thermo rows (kept and written), trajectory frames, progress
    bar, and the time after the first block (which includes compilation)."""

    def __init__(self, integrator: Integrator, cfg: MDConfig, atoms: Atoms, out: Path | None, progress: bool):
        conserved = integrator.conserved_energy or (lambda s: s.energy + kinetic_energy(s.velocities, s.masses))
        self.observe = jax.jit(lambda s: (s.energy, kinetic_energy(s.velocities, s.masses),
                                          temperature_of(s.velocities, s.masses), conserved(s)))
        self.cfg, self.rows, self.t_first = cfg, [], None
        self.thermo_log = self.traj = self.bar = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self.thermo_log = ThermoLog(out / "thermo.log")
            self.traj = TrajectoryWriter(out / "trajectory.extxyz", atoms)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.steps, unit="step", desc=f"md {cfg.ensemble}")

    def record(self, state: MDState, step: int, n: int = 0):
        dt = self.cfg.timestep
        e_pot, e_kin, temp, e_cons = (float(x) for x in self.observe(state))
        if not np.isfinite(e_pot + e_kin):
            raise FloatingPointError(f"MD blew up at step {step}: E_pot={e_pot} eV, E_kin={e_kin} eV")
        self.rows.append((step, step * dt, temp, e_pot, e_kin, e_pot + e_kin, e_cons))
        if self.thermo_log:
            self.thermo_log.write(step, step * dt, temp, e_pot, e_kin, e_cons)
        if self.traj and step % self.cfg.traj_every == 0:
            self.traj.write(step, step * dt, state.positions, state.velocities, e_pot, state.forces)
        if n and self.t_first is None:
            self.t_first = (time.perf_counter(), step)
        if self.bar and n:
            self.bar.update(n)

    def ns_per_day(self, done: int, wall: float) -> float:
        """Simulated ns per day of wall time, excluding the first block (compilation)."""
        if self.t_first is not None and done > self.t_first[1]:
            done, wall = done - self.t_first[1], time.perf_counter() - self.t_first[0]
        return done * self.cfg.timestep * 1e-6 / max(wall, 1e-12) * 86400.0

    def thermo(self) -> dict:
        return {name: np.array([r[k] for r in self.rows]) for k, name in enumerate(THERMO_KEYS)}

    def close(self):
        for f in (self.thermo_log, self.traj, self.bar):
            if f is not None:
                f.close()
