"""The MD driver used by ``nnpes md`` and by committee exploration: blocks of steps under one
jitted ``lax.scan`` (``run_blocks``), output between blocks, and neighbour-list overflow handled
by reallocating and redoing the block.

``run_md`` also knows when a run has failed. After every block (the thermo interval) the host checks
a few numbers computed on device at the end of the block, and stops with ``MDInstability`` (the
thermo log and trajectory written so far are kept, the failing frame appended to the trajectory)
when
  - the temperature passes ``max_temperature`` (default: NVT 10 × the target, at least 1000 K;
    NVE the larger of 5000 K and 10 × the starting temperature),
  - the conserved energy (NVE; Nosé–Hoover's extended energy) has drifted more than
    ``max_energy_drift`` eV/atom from its start (default 0.1),
  - two atoms are closer than ``min_distance`` Å (default 0.5; checked at step 0 too),
  - an atom moved more than ``max_displacement`` Å in one interval (default: the larger of the
    model's cutoff and 0.2 Å/fs × the interval, far beyond thermal motion below 5000 K): atoms
    flying apart.
A bound of ``math.inf`` (``min_distance`` 0) switches its check off.
"""

from __future__ import annotations

import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator

from nnpes.graph.build import atoms_to_graph
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
    ``capacity_multiplier``. The run stops with ``MDInstability`` past ``max_temperature`` K,
    ``max_energy_drift`` eV/atom of conserved-energy drift (NVE, Nosé–Hoover), ``min_distance`` Å
    between two atoms or ``max_displacement`` Å of one atom in a thermo interval (None: the
    defaults of the module docstring; ``math.inf``, or ``min_distance`` 0, switches a check off)."""

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
    max_temperature: float | None = None
    max_energy_drift: float = 0.1
    min_distance: float = 0.5
    max_displacement: float | None = None

    def __post_init__(self):
        if self.steps < 0 or self.timestep <= 0 or self.thermo_every < 1:
            raise ValueError(f"need steps >= 0, timestep > 0 fs, thermo_every >= 1; got {self.steps}, "
                             f"{self.timestep}, {self.thermo_every}")
        if self.traj_every % self.thermo_every:
            raise ValueError(f"traj_every ({self.traj_every}) must be a multiple of thermo_every ({self.thermo_every})")
        for name in ("max_temperature", "max_energy_drift", "min_distance", "max_displacement"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ValueError(f"{name} must be >= 0 (math.inf: no limit), got {v}")

    def temperature_limit(self, start_temperature: float) -> float:
        """K: ``max_temperature``, or its default for this ensemble (module docstring)."""
        if self.max_temperature is not None:
            return self.max_temperature
        if self.ensemble == "nvt":
            return max(10.0 * self.temperature, 1000.0)
        return max(5000.0, 10.0 * start_temperature)

    def displacement_limit(self, cutoff: float) -> float:
        """Å per thermo interval: ``max_displacement``, or the larger of ``cutoff`` and 0.2 Å/fs × the interval."""
        if self.max_displacement is not None:
            return self.max_displacement
        return max(cutoff, 0.2 * self.thermo_every * self.timestep)


class MDInstability(FloatingPointError):
    """The MD run blew up (a bound of ``MDConfig`` passed, or non-finite energies); ``step`` is where
    it was seen."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


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
                raise MDInstability(
                    f"MD blew up after step {done}: the neighbour list overflowed {retries} times in one "
                    "block; lower the timestep or check the structure", done)
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
    warn_start = getattr(potential, "warn_close_contacts", None)  # a Potential with a model card
    if warn_start is not None:  # start closer than the training data: ShortDistanceWarning
        warn_start([atoms_to_graph(atoms, potential.cutoff)], stacklevel=3)
    neighbor_fn, energy_fn = md_functions(potential, atoms, skin=cfg.skin, capacity_multiplier=cfg.capacity_multiplier)
    dtype = energy_fn.dtype
    integrator = make_integrator(energy_fn.energy_and_forces, cfg.ensemble, cfg.timestep, cfg.temperature,
                                 cfg.thermostat, cfg.friction, cfg.tau)
    positions = jnp.asarray(atoms.positions, dtype)
    masses = jnp.asarray(atoms.get_masses(), dtype)
    velocities = jnp.asarray(initial_velocities(atoms, cfg.temperature, cfg.seed), dtype)
    nbrs = neighbor_fn.allocate(positions)
    state = jax.jit(integrator.init_fn)(positions, velocities, masses, nbrs, jax.random.PRNGKey(cfg.seed))
    observe = _observer(integrator)

    def block(st, nb, n):  # the block's steps, then what the host checks, in one call
        new_st, new_nb = run_steps(integrator.step_fn, st, nb, n)
        return new_st, new_nb, observe(new_st, new_nb, st.positions)

    block_fn = jax.jit(block, static_argnums=2)
    out = Path(out_dir) if out_dir is not None else None
    log = _MDLog(cfg, atoms, out, progress, conserved=integrator.conserved_energy is not None,
                 cutoff=energy_fn.cutoff)
    start = time.perf_counter()
    try:
        log.record(state, jax.jit(observe)(state, nbrs, state.positions), 0)
        run = run_blocks(block_fn, state, nbrs, neighbor_fn, cfg.steps, cfg.thermo_every,
                         lambda st, obs, done, n: log.record(st, obs, done, n))
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


class Observation(NamedTuple):
    """What the host sees of the state after a block: energies eV, temperature K, the closest pair
    (distance Å, atoms i and j) and the largest displacement in the block (Å, atom)."""

    e_pot: jnp.ndarray
    e_kin: jnp.ndarray
    temperature: jnp.ndarray
    e_conserved: jnp.ndarray
    min_distance: jnp.ndarray
    pair_i: jnp.ndarray
    pair_j: jnp.ndarray
    max_displacement: jnp.ndarray
    moved: jnp.ndarray


def _observer(integrator: Integrator) -> Callable:
    """``observe(state, nbrs, positions_before) -> Observation`` (jittable). The closest pair is
    found on the neighbour list, which holds every pair within the cutoff at the state's positions."""
    conserved = integrator.conserved_energy or (lambda s: s.energy + kinetic_energy(s.velocities, s.masses))

    def observe(state: MDState, nbrs, before) -> Observation:
        pos = state.positions
        n = pos.shape[0]
        box = jnp.asarray(nbrs.layout.box, pos.dtype)  # periodic rows are the cell; shifts are 0 along the others
        recv, send = jnp.minimum(nbrs.receivers, n - 1), jnp.minimum(nbrs.senders, n - 1)
        vec = pos[send] - pos[recv] + nbrs.shifts.astype(pos.dtype) @ box
        d2 = jnp.where(nbrs.receivers < n, jnp.sum(vec * vec, -1), jnp.inf)
        k = jnp.argmin(d2)
        moved2 = jnp.sum((pos - before) ** 2, -1)
        a = jnp.argmax(moved2)
        return Observation(state.energy, kinetic_energy(state.velocities, state.masses),
                           temperature_of(state.velocities, state.masses), conserved(state),
                           jnp.sqrt(d2[k]), recv[k], send[k], jnp.sqrt(moved2[a]), a)

    return observe


class _MDLog:
    """run_md's output between blocks: thermo rows (kept and written), trajectory frames, progress
    bar, the time after the first block (which includes compilation), and the checks that stop a
    run that blew up (``MDConfig``'s bounds)."""

    def __init__(self, cfg: MDConfig, atoms: Atoms, out: Path | None, progress: bool, *, conserved: bool,
                 cutoff: float):
        self.cfg, self.rows, self.t_first = cfg, [], None
        self.out, self.n_atoms, self.conserved = out, len(atoms), conserved
        self.max_displacement = cfg.displacement_limit(cutoff)
        self.max_temperature = self.e_start = None  # set at step 0
        self.thermo_log = self.traj = self.bar = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self.thermo_log = ThermoLog(out / "thermo.log")
            self.traj = TrajectoryWriter(out / "trajectory.extxyz", atoms)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.steps, unit="step", desc=f"md {cfg.ensemble}")

    def record(self, state: MDState, obs: Observation, step: int, n: int = 0):
        """Write the thermo row (and frame) of ``step``, then check it: ``MDInstability`` if the run
        blew up (the failing frame is appended to the trajectory first)."""
        dt = self.cfg.timestep
        obs = jax.device_get(obs)
        e_pot, e_kin, temp, e_cons = (float(x) for x in obs[:4])
        if not np.isfinite(e_pot + e_kin):
            raise MDInstability(f"MD blew up at step {step}: E_pot={e_pot} eV, E_kin={e_kin} eV{self._kept()}", step)
        self.rows.append((step, step * dt, temp, e_pot, e_kin, e_pot + e_kin, e_cons))
        if self.thermo_log:
            self.thermo_log.write(step, step * dt, temp, e_pot, e_kin, e_cons)
        written = bool(self.traj) and step % self.cfg.traj_every == 0
        if written:
            self.traj.write(step, step * dt, state.positions, state.velocities, e_pot, state.forces)
        if step == 0:
            self.max_temperature, self.e_start = self.cfg.temperature_limit(temp), e_cons
        problem = self._problem(obs, temp, e_cons, n * dt)
        if problem:
            if self.traj and not written:
                self.traj.write(step, step * dt, state.positions, state.velocities, e_pot, state.forces)
            raise MDInstability(f"MD blew up at step {step} ({step * dt:g} fs): {problem}{self._kept()}; "
                                "lower the timestep or check the structure and the model", step)
        if n and self.t_first is None:
            self.t_first = (time.perf_counter(), step)
        if self.bar and n:
            self.bar.update(n)

    def _problem(self, obs: Observation, temp: float, e_cons: float, interval_fs: float) -> str | None:
        """What is wrong with the observed state, or None (the checks of the module docstring)."""
        cfg = self.cfg
        if temp > self.max_temperature:
            return f"temperature {temp:.0f} K > max_temperature {self.max_temperature:.0f} K"
        drift = (e_cons - self.e_start) / self.n_atoms
        if self.conserved and abs(drift) > cfg.max_energy_drift:
            return f"the conserved energy drifted by {drift:+.3g} eV/atom (max_energy_drift {cfg.max_energy_drift:g} eV/atom)"
        if float(obs.min_distance) < cfg.min_distance:
            return (f"atoms {int(obs.pair_i)} and {int(obs.pair_j)} are {float(obs.min_distance):.3f} Å apart "
                    f"(min_distance {cfg.min_distance:g} Å)")
        if float(obs.max_displacement) > self.max_displacement:
            return (f"atom {int(obs.moved)} moved {float(obs.max_displacement):.3g} Å in {interval_fs:g} fs "
                    f"(max_displacement {self.max_displacement:g} Å): the atoms are flying apart")
        return None

    def _kept(self) -> str:
        return f"; thermo.log and trajectory.extxyz up to here are in {self.out}" if self.out is not None else ""

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
