"""The MD driver used by ``nnpes md`` and by committee exploration: blocks of steps under one
jitted ``lax.scan`` (``run_blocks``), output between blocks, and neighbour-list overflow handled
by reallocating and redoing the block.

``run_md`` also knows when a run has failed. After every block (the thermo interval) the host checks
a few numbers computed on device at the end of the block, and stops with ``MDInstability`` (the
thermo log and trajectory written so far are kept, the failing frame appended to the trajectory)
when
  - the temperature passes ``max_temperature`` (default: NVT 10 × the target, at least 1000 K;
    NVE the larger of 5000 K and 10 × the starting temperature),
  - the conserved energy (NVE's total; Nosé–Hoover's extended energy; Langevin's total less the
    thermostat's heat) has drifted more than
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

from nnpes.compile_cache import CompileCounter
from nnpes.files import ensure_writable_dir
from nnpes.graph.build import atoms_to_graph
from nnpes.md.functions import md_functions
from nnpes.md.integrators import (
    Integrator, MDState, check_npt_cell, kinetic_energy, kinetic_stress, langevin, maxwell_boltzmann, nose_hoover_chain,
    npt_langevin,
    run_steps,
    velocity_verlet,
)
from nnpes.md.integrators import temperature as temperature_of
from nnpes.md.io import PRESSURE_COLUMNS, THERMO_COLUMNS, ThermoLog, TrajectoryWriter

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover")


@dataclass(frozen=True)
class MDConfig:
    """Settings of ``run_md``: ``steps`` of ``timestep`` fs; ``ensemble`` nve | nvt at
    ``temperature`` K with ``thermostat`` langevin (``friction`` 1/fs) | nose-hoover (``tau`` fs);
    npt: Langevin at ``temperature`` and ``pressure`` GPa by stochastic cell rescaling (volume
    relaxation time ``tau_p`` fs, ``compressibility`` 1/GPa guessed; ``npt_langevin``), the cell
    scaled as a whole (``npt_cell`` isotropic) or every length and angle free (flexible);
    a thermo line every ``thermo_every`` steps (also the block length), a trajectory frame every
    ``traj_every``; ``seed`` for velocities and noise; Verlet ``skin`` Å and buffer head room
    ``capacity_multiplier``. The run stops with ``MDInstability`` past ``max_temperature`` K,
    ``max_energy_drift`` eV/atom of conserved-energy drift, ``min_distance`` Å
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
    pressure: float = 0.0
    tau_p: float = 1000.0
    compressibility: float = 0.01
    npt_cell: str = "isotropic"

    def __post_init__(self):
        if self.steps < 0 or self.timestep <= 0 or self.thermo_every < 1:
            raise ValueError(f"need steps >= 0, timestep > 0 fs, thermo_every >= 1; got {self.steps}, "
                             f"{self.timestep}, {self.thermo_every}")
        check_npt_cell(self.npt_cell)  # at construction, not when the integrator is made
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
        if self.ensemble in ("nvt", "npt"):
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
class MDTiming:
    """Where an MD loop's wall time went, s. ``step_s``: blocks of steps that compiled nothing
    (``steps_timed`` steps; ns/day comes from these alone, whatever the block length);
    ``compile_s``: blocks that compiled (the first, a shorter last block, the first block after a
    reallocation), ``n_compiles`` XLA compilations in all; ``reallocation_s``: overflowed blocks
    thrown away and the reallocations (``n_reallocations``); ``host_s``: output and checks between
    blocks; ``setup_s``: before the first block (allocation, initial forces)."""

    steps_timed: int = 0
    step_s: float = 0.0
    compile_s: float = 0.0
    n_compiles: int = 0
    reallocation_s: float = 0.0
    n_reallocations: int = 0
    host_s: float = 0.0
    setup_s: float = 0.0

    def ns_per_day(self, timestep_fs: float) -> float:
        """Simulated ns per day of the timed steps (NaN if every block compiled: run more steps)."""
        if self.steps_timed == 0 or self.step_s <= 0:
            return float("nan")
        return self.steps_timed * timestep_fs * 1e-6 / self.step_s * 86400.0

    def summary(self) -> str:
        """One line: the time that was not MD steps."""
        return (f"compile {self.compile_s:.1f} s ({self.n_compiles} XLA compilations), neighbour-list "
                f"reallocations {self.n_reallocations} ({self.reallocation_s:.1f} s), setup {self.setup_s:.1f} s, "
                f"output and checks {self.host_s:.1f} s")


@dataclass
class BlockRun:
    """What ``run_blocks`` ends with: the state and list after ``steps_done`` steps, and where the
    time went."""

    state: object
    nbrs: object
    steps_done: int
    n_reallocations: int
    timing: MDTiming = field(default_factory=MDTiming)


def _cell_of(state) -> dict:
    """``{"cell": (3,3)}`` for ``allocate`` when the state carries a variable cell (NPT), else {}."""
    cell = getattr(state, "cell", None)
    return {} if cell is None else {"cell": np.asarray(cell, np.float64)}


# Consecutive overflows of one block before giving up: each reallocation fits every count the
# failed attempt needed, so more than a few means the atoms blew apart or collapsed.
MAX_REALLOCATIONS_PER_BLOCK = 4


def run_blocks(block_fn: Callable, state, nbrs, neighbor_fn, steps: int, block: int,
               on_block: Callable | None = None) -> BlockRun:
    """Advance ``steps`` steps in blocks of ``block``: ``block_fn(state, nbrs, n) -> (state, nbrs,
    out)`` (jitted, ``n`` static); ``state.positions`` (N,3) Å. A block whose list overflowed is
    redone from its start with a list reallocated to fit. After each accepted block
    ``on_block(state, out, done, n)`` runs; returning False stops early. Each block is timed to
    its end (``block_until_ready``), and counted as steps or as compilation (``MDTiming``)."""
    done, retries = 0, 0
    timing = MDTiming()
    with CompileCounter() as compiles:
        while done < steps:
            n = min(block, steps - done)
            n_compiled, t0 = compiles.n, time.perf_counter()
            new_state, new_nbrs, out = jax.block_until_ready(block_fn(state, nbrs, n))
            elapsed = time.perf_counter() - t0
            if bool(new_nbrs.did_buffer_overflow):
                retries += 1
                if retries > MAX_REALLOCATIONS_PER_BLOCK:
                    raise MDInstability(
                        f"MD blew up after step {done}: the neighbour list overflowed {retries} times in one "
                        "block; lower the timestep or check the structure", done)
                nbrs = neighbor_fn.allocate(state.positions, previous=new_nbrs, **_cell_of(state))
                timing.n_reallocations += 1
                timing.reallocation_s += time.perf_counter() - t0
                continue
            if compiles.n > n_compiled:
                timing.compile_s += elapsed
            else:
                timing.steps_timed += n
                timing.step_s += elapsed
            state, nbrs, retries = new_state, new_nbrs, 0
            done += n
            t0 = time.perf_counter()
            stop = on_block is not None and on_block(state, out, done, n) is False
            timing.host_s += time.perf_counter() - t0
            if stop:
                break
    timing.n_compiles = compiles.n
    return BlockRun(state, nbrs, done, timing.n_reallocations, timing)


@dataclass
class MDResult:
    """atoms: final structure (positions, velocities, energy, forces); thermo: the logged columns;
    ns_per_day: of the steps alone (``MDTiming``: no compilation, reallocation or output);
    n_reallocations: neighbour-list overflows; timing: where ``wall_s`` went."""

    atoms: Atoms
    state: MDState
    steps: int
    wall_s: float
    ns_per_day: float
    n_reallocations: int
    thermo: dict = field(default_factory=dict)
    timing: MDTiming = field(default_factory=MDTiming)


def make_integrator(energy_and_forces, ensemble: str, timestep: float, temperature_K: float,
                    thermostat: str = "langevin", friction: float = 0.01, tau: float = 100.0, *,
                    energy_forces_stress: Callable | None = None, pressure: float = 0.0, tau_p: float = 1000.0,
                    compressibility: float = 0.01, npt_cell: str = "isotropic") -> Integrator:
    """``ensemble`` nve | nvt | npt; for nvt ``thermostat`` langevin (friction 1/fs) | nose-hoover
    (tau fs); npt (``npt_langevin``) needs ``energy_forces_stress`` (``EnergyFn``'s), ``pressure``
    GPa, ``tau_p`` fs, ``compressibility`` 1/GPa and ``npt_cell`` isotropic | flexible."""
    if ensemble == "nve":
        return velocity_verlet(energy_and_forces, timestep)
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")
    if temperature_K <= 0:
        raise ValueError(f"{ensemble} needs a temperature > 0 K, got {temperature_K}")
    if ensemble == "npt":
        if thermostat != "langevin":
            raise ValueError(f"npt runs with the langevin thermostat, not {thermostat!r}")
        if tau_p <= 0 or compressibility <= 0:
            raise ValueError(f"npt needs tau_p > 0 fs and compressibility > 0 1/GPa, got {tau_p}, {compressibility}")
        return npt_langevin(energy_forces_stress, timestep, temperature_K, pressure, friction, tau_p, compressibility,
                            cell=npt_cell)
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


def output_dir(out_dir) -> Path | None:
    """``out_dir`` created and writable, or a one-line ValueError naming it (None: no output)."""
    if out_dir is None:
        return None
    try:
        return ensure_writable_dir(out_dir)
    except OSError as e:
        raise ValueError(f"MD output directory {out_dir} cannot be written ({e.strerror or e}); "
                         "choose another --out or make it writable") from e


def run_md(potential, atoms: Atoms, config: MDConfig | None = None, *, out_dir=None, progress: bool = False,
           note: str = "", **settings) -> MDResult:
    """Run ``config.steps`` steps of ``config.timestep`` fs from ``atoms``; writes ``thermo.log``
    and ``trajectory.extxyz`` to ``out_dir`` (if given) every thermo_every / traj_every steps.
    ``settings`` are MDConfig fields (``run_md(pot, atoms, steps=1000, timestep=0.5)``); given with
    ``config`` they override it. ``note`` (e.g. the model's path) goes into the thermo log's
    header line with the settings. Fully periodic cells add volume, pressure and stress columns."""
    cfg = MDConfig(**settings) if config is None else dataclasses.replace(config, **settings)
    out = output_dir(out_dir)  # before anything compiles: a run must not end without its output
    warn_start = getattr(potential, "warn_close_contacts", None)  # a Potential with a model card
    if warn_start is not None:  # start closer than the training data: ShortDistanceWarning
        warn_start([atoms_to_graph(atoms, potential.cutoff)], stacklevel=3)
    start = time.perf_counter()
    velocities = initial_velocities(atoms, cfg.temperature, cfg.seed)
    # Buffers sized for the hotter of the target and the start (an NVE run from a hot start).
    t_start = float(temperature_of(velocities, np.asarray(atoms.get_masses())))
    periodic = bool(np.all(atoms.pbc)) and atoms.cell.volume > 0
    if cfg.ensemble == "npt" and not periodic:
        raise ValueError("npt needs a cell periodic in all three directions with a non-zero volume")
    neighbor_fn, energy_fn = md_functions(potential, atoms, skin=cfg.skin, capacity_multiplier=cfg.capacity_multiplier,
                                          temperature=max(cfg.temperature, t_start), variable_cell=cfg.ensemble == "npt")
    dtype = energy_fn.dtype
    integrator = make_integrator(energy_fn.energy_and_forces, cfg.ensemble, cfg.timestep, cfg.temperature,
                                 cfg.thermostat, cfg.friction, cfg.tau, energy_forces_stress=energy_fn.energy_forces_stress,
                                 pressure=cfg.pressure, tau_p=cfg.tau_p, compressibility=cfg.compressibility,
                                 npt_cell=cfg.npt_cell)
    positions = jnp.asarray(atoms.positions, dtype)
    masses = jnp.asarray(atoms.get_masses(), dtype)
    velocities = jnp.asarray(velocities, dtype)
    nbrs = neighbor_fn.allocate(positions)
    state = jax.jit(integrator.init_fn)(positions, velocities, masses, nbrs, jax.random.PRNGKey(cfg.seed))
    observe = _observer(integrator, energy_fn.energy_forces_stress if periodic else None)

    def block(st, nb, n):  # the block's steps, then what the host checks, in one call
        new_st, new_nb = run_steps(integrator.step_fn, st, nb, n)
        return new_st, new_nb, observe(new_st, new_nb, st.positions)

    block_fn = jax.jit(block, static_argnums=2)
    log = _MDLog(cfg, atoms, out, progress, cutoff=energy_fn.cutoff, periodic=periodic, note=note)
    try:
        log.record(state, jax.jit(observe)(state, nbrs, state.positions), 0)
        setup = time.perf_counter() - start
        run = run_blocks(block_fn, state, nbrs, neighbor_fn, cfg.steps, cfg.thermo_every,
                         lambda st, obs, done, n: log.record(st, obs, done, n))
    finally:
        log.close()
    wall = time.perf_counter() - start
    run.timing.setup_s = setup
    state = run.state
    final = atoms.copy()
    if state.cell is not None:
        final.cell = np.asarray(state.cell, np.float64)
    final.positions = np.asarray(state.positions, np.float64)
    final.set_velocities(np.asarray(state.velocities, np.float64) / units.fs)
    final.calc = SinglePointCalculator(final, energy=float(state.energy), forces=np.asarray(state.forces, np.float64))
    return MDResult(final, state, run.steps_done, wall, run.timing.ns_per_day(cfg.timestep),
                    run.n_reallocations, log.thermo(), run.timing)


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
    stress: jnp.ndarray  # (3,3) eV/Å³, model + kinetic (ase's sign); zeros for non-periodic cells
    volume: jnp.ndarray  # Å³ (of the box: meaningful for periodic cells)


def _observer(integrator: Integrator, energy_forces_stress: Callable | None = None) -> Callable:
    """``observe(state, nbrs, positions_before) -> Observation`` (jittable). The closest pair is
    found on the neighbour list, which holds every pair within the cutoff at the state's positions.
    With ``energy_forces_stress`` (``EnergyFn``'s, periodic cells) the stress is evaluated here,
    once per block, not in every step."""
    # An integrator without a conserved quantity: NaN in the log, and the drift check never fires.
    conserved = integrator.conserved_energy or (lambda s: jnp.full((), jnp.nan, s.energy.dtype))

    def stress_of(state, nbrs, box):
        if energy_forces_stress is None:
            return jnp.zeros((3, 3), state.positions.dtype)
        virial = energy_forces_stress(state.positions, neighbor=nbrs, cell=box)[2]
        return virial + kinetic_stress(state.velocities, state.masses, jnp.abs(jnp.linalg.det(box)))

    def observe(state: MDState, nbrs, before) -> Observation:
        pos = state.positions
        n = pos.shape[0]
        # Periodic rows are the cell (the state's in NPT); shifts are 0 along the others.
        box = (nbrs.box if state.cell is None else state.cell).astype(pos.dtype)
        recv, send = jnp.minimum(nbrs.receivers, n - 1), jnp.minimum(nbrs.senders, n - 1)
        vec = pos[send] - pos[recv] + nbrs.shifts.astype(pos.dtype) @ box
        d2 = jnp.where(nbrs.receivers < n, jnp.sum(vec * vec, -1), jnp.inf)
        k = jnp.argmin(d2)
        moved2 = jnp.sum((pos - before) ** 2, -1)
        a = jnp.argmax(moved2)
        return Observation(state.energy, kinetic_energy(state.velocities, state.masses),
                           temperature_of(state.velocities, state.masses), conserved(state),
                           jnp.sqrt(d2[k]), recv[k], send[k], jnp.sqrt(moved2[a]), a, stress_of(state, nbrs, box),
                           jnp.abs(jnp.linalg.det(box)))

    return observe


class _MDLog:
    """run_md's output between blocks: thermo rows (kept and written), trajectory frames, progress
    bar, and the checks that stop a run that blew up (``MDConfig``'s bounds)."""

    def __init__(self, cfg: MDConfig, atoms: Atoms, out: Path | None, progress: bool, *, cutoff: float,
                 periodic: bool, note: str = ""):
        self.cfg, self.rows = cfg, []
        self.out, self.n_atoms = out, len(atoms)
        self.periodic = periodic
        self.columns = THERMO_COLUMNS + (PRESSURE_COLUMNS if periodic else ())
        self.max_displacement = cfg.displacement_limit(cutoff)
        self.max_temperature = self.e_start = None  # set at step 0
        self.thermo_log = self.traj = self.bar = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self.thermo_log = ThermoLog(out / "thermo.log", header=self.header(atoms, note),
                                        extra_columns=self.columns[len(THERMO_COLUMNS):])
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
        extra = ()
        if self.periodic:  # V, P = −trace/3, Voigt stress; GPa
            sigma = np.asarray(obs.stress, np.float64) / units.GPa
            extra = (float(obs.volume), -np.trace(sigma) / 3.0, *sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]])
        self.rows.append((step, step * dt, temp, e_pot, e_kin, e_pot + e_kin, e_cons, *extra))
        if self.thermo_log:
            self.thermo_log.write(step, step * dt, temp, e_pot, e_kin, e_cons, *extra)
        written = bool(self.traj) and step % self.cfg.traj_every == 0
        if written:
            self.traj.write(step, step * dt, state.positions, state.velocities, e_pot, state.forces, state.cell)
        if step == 0:
            self.max_temperature, self.e_start = self.cfg.temperature_limit(temp), e_cons
        problem = self._problem(obs, temp, e_cons, n * dt)
        if problem:
            if self.traj and not written:
                self.traj.write(step, step * dt, state.positions, state.velocities, e_pot, state.forces, state.cell)
            raise MDInstability(f"MD blew up at step {step} ({step * dt:g} fs): {problem}{self._kept()}; "
                                "lower the timestep or check the structure and the model", step)
        if self.bar and n:
            self.bar.update(n)

    def _problem(self, obs: Observation, temp: float, e_cons: float, interval_fs: float) -> str | None:
        """What is wrong with the observed state, or None (the checks of the module docstring)."""
        cfg = self.cfg
        if temp > self.max_temperature:
            return f"temperature {temp:.0f} K > max_temperature {self.max_temperature:.0f} K"
        drift = (e_cons - self.e_start) / self.n_atoms
        if abs(drift) > cfg.max_energy_drift:  # False for NaN (an integrator that conserves nothing)
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

    def thermo(self) -> dict:
        return {name: np.array([r[k] for r in self.rows]) for k, name in enumerate(self.columns)}

    def header(self, atoms: Atoms, note: str) -> str:
        """The thermo log's first line: what was run, with every setting."""
        cfg = self.cfg
        kind = cfg.ensemble if cfg.ensemble == "nve" else f"{cfg.ensemble} ({cfg.thermostat})"
        conserved = {"nve": "E_tot", "langevin": "E_tot minus the heat the Langevin thermostat put in (Bussi & "
                     "Parrinello 2007)", "nose-hoover": "E_tot plus the Nose-Hoover chain's energy",
                     "npt": "E_tot + P0 V minus the heat the Langevin thermostat put in and the work of the barostat (Bernetti & Bussi 2020)"}
        what = conserved[cfg.thermostat if cfg.ensemble == "nvt" else cfg.ensemble]
        settings = " ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())
        pbc = "".join("T" if p else "F" for p in atoms.pbc)
        return (f"nnpes md {kind}: {len(atoms)} atoms {atoms.get_chemical_formula()}, pbc {pbc}"
                + (f", {note}" if note else "") + f"; E_conserved = {what}; {settings}")

    def close(self):
        for f in (self.thermo_log, self.traj, self.bar):
            if f is not None:
                f.close()
