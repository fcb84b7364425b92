"""Committee MD for exploration: the MD engine (``nnpes.md``: device Verlet list, ``langevin``
BAOAB, the ``run_blocks`` block/overflow/reallocation driver of ``run_md``) driving the committee
energy function (``md_functions(ensemble, atoms)``), optionally biased (``nnpes.active.biases``).
The disagreement ε is computed inside the jitted step from the same evaluation that moved the
atoms, and a trajectory stops as soon as ε passes the upper trust level (beyond it the model is
lost and further steps only produce garbage). Positions are Cartesian and never wrapped, so
collective variables see continuous distances.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from nnpes.active.biases import UncertaintyBias, WellTemperedMetaD, biased, make_cv, update_states
from nnpes.active.ensemble import Ensemble
from nnpes.active.uncertainty import committee_measures
from nnpes.config.active import ExploreConfig
from nnpes.md import MDState, langevin, maxwell_boltzmann, md_functions, run_blocks
from nnpes.md import temperature as temperature_of
from nnpes.potential.compiled import cached


def make_biases(cfg: ExploreConfig, n_atoms: int, temperature: float) -> tuple:
    """Bias objects from the config for one trajectory (metadynamics' ΔT uses its temperature)."""
    out = []
    if cfg.metadynamics:
        md = dict(cfg.metadynamics)
        cvs = tuple(make_cv(c) for c in md.pop("cvs"))
        sigma = md.pop("sigma")
        sigma = tuple(float(s) for s in (sigma if isinstance(sigma, (list, tuple)) else [sigma] * len(cvs)))
        if len(sigma) != len(cvs):
            raise ValueError(f"explore.metadynamics.sigma: {len(sigma)} widths for {len(cvs)} collective variables")
        out.append(WellTemperedMetaD(cvs, sigma, temperature=max(temperature, 1.0), **md))
    if cfg.uncertainty_bias:
        out.append(UncertaintyBias(n_atoms=n_atoms, **cfg.uncertainty_bias))
    return tuple(out)


class ExploreState(NamedTuple):
    """One trajectory's carry: ``md`` (its ``energy`` holds the biased committee output dict),
    ``biases`` (the biases' states), ``step`` () int steps taken, ``running`` / ``stopped`` () bool."""

    md: MDState
    biases: tuple
    step: jnp.ndarray
    running: jnp.ndarray
    stopped: jnp.ndarray

    @property
    def positions(self):
        """(N,3) Å (``run_blocks`` reallocates the list here)."""
        return self.md.positions


class StepRecord(NamedTuple):
    """Per step of a block (leading axis: steps): positions (N,3) Å, taken, ε, the measures
    (eV/Å, 1, eV/atom), committee-mean energy and bias energy (eV), temperature (K), step."""

    positions: jnp.ndarray
    taken: jnp.ndarray
    eps: jnp.ndarray
    max_force_std: jnp.ndarray
    max_rel_force_std: jnp.ndarray
    energy_std_per_atom: jnp.ndarray
    energy: jnp.ndarray
    bias_energy: jnp.ndarray
    temperature: jnp.ndarray
    step: jnp.ndarray


class CommitteeMD(NamedTuple):
    """The compiled pieces of one exploration setting (structure, config, biases): ``init`` and
    ``block`` take the stacked variables, temperature (K) and std_scale as traced arguments."""

    neighbor_fn: object
    biases: tuple
    init: object
    block: object


def _measures(out, nu, std_scale):
    """(max_force_std eV/Å, max_rel_force_std 1, energy_std_per_atom eV/atom) of one structure."""
    f_k = out["member_forces"]
    n = f_k.shape[1]
    m = committee_measures(out["member_energy"][:, None], f_k, jnp.ones(n, bool), jnp.zeros(n, jnp.int32),
                           jnp.asarray([n]), nu)
    return tuple(m[k][0] * std_scale for k in ("max_force_std", "max_rel_force_std", "energy_std_per_atom"))


def committee_md(ensemble: Ensemble, atoms: Atoms, cfg: ExploreConfig, biases: tuple) -> CommitteeMD:
    """Langevin MD on the biased committee mean for ``atoms``' species, cell and pbc."""
    # One list for every temperature of the exploration: sized for thermal motion at the hottest.
    neighbor_fn, energy_fn = md_functions(ensemble, atoms, skin=cfg.skin, capacity_multiplier=cfg.capacity_multiplier,
                                          temperature=max(cfg.temperatures))
    fn = biased(energy_fn.member_energies_and_forces, biases)
    stop_above = np.inf if cfg.stop_above is None else float(cfg.stop_above)
    relative = cfg.measure == "max_rel_force_std"
    nu = ensemble.nu

    def integrator(variables, bias_states, temperature):
        def energy_and_forces(positions, neighbor=None):
            out = fn(positions, bias_states, neighbor=neighbor, params=variables)
            return out, out["forces"]

        return langevin(energy_and_forces, cfg.timestep, temperature, cfg.friction)

    def init(variables, temperature, x, v, masses, nbrs, key, bias_states):
        md = integrator(variables, bias_states, temperature).init_fn(x, v, masses, nbrs, key)
        return ExploreState(md, bias_states, jnp.zeros((), jnp.int32), jnp.array(True), jnp.array(False))

    def step(variables, temperature, std_scale, carry):
        st, nbrs = carry
        md, nbrs1 = integrator(variables, st.biases, temperature).step_fn(st.md, nbrs)
        out = md.energy
        eps_abs, eps_rel, e_std = _measures(out, nu, std_scale)
        eps = eps_rel if relative else eps_abs
        # An overflowed list gives NaN energies: that block is redone by run_blocks, not a stop.
        stop = ~nbrs1.did_buffer_overflow & (~jnp.isfinite(eps) | (eps > stop_above))
        new = ExploreState(md, update_states(biases, st.biases, md.positions, out["member_energy"], st.step),
                           st.step + 1, ~stop, stop)
        take = st.running
        st, nbrs = jax.tree_util.tree_map(lambda a, b: jnp.where(take, a, b), (new, nbrs1), (st, nbrs))
        rec = StepRecord(md.positions, take, eps, eps_abs, eps_rel, e_std, jnp.mean(out["member_energy"]),
                         out["bias_energy"], temperature_of(md.velocities, md.masses), new.step)
        return (st, nbrs), rec

    def block(st, nbrs, n, variables, temperature, std_scale):
        body = lambda carry, _: step(variables, temperature, std_scale, carry)
        (st, nbrs), recs = jax.lax.scan(body, (st, nbrs), None, length=n)
        return st, nbrs, recs

    return CommitteeMD(neighbor_fn, biases, jax.jit(init), jax.jit(block, static_argnums=2))


@dataclass
class Trajectory:
    start: int
    temperature: float
    steps_done: int
    stopped: bool  # passed the upper trust level (or produced a non-finite ε)
    max_eps: float
    n_reallocations: int = 0  # neighbour-list overflows (each block redone with a bigger list)


def explore(ensemble: Ensemble, starts: Sequence[Atoms], cfg: ExploreConfig, *, seed: int | None = None):
    """Run one trajectory per (start, temperature). Returns (frames, trajectories): frames are
    ase.Atoms every ``stride`` steps plus the frame that stopped a trajectory, with
    ``info`` keys ``al_eps``, ``max_force_std`` (eV/Å), ``max_rel_force_std``, ``energy_std_per_atom``
    (eV/atom), ``al_cv`` (list, with metadynamics), ``al_start``, ``al_temperature`` (K), ``al_step``,
    ``al_md_temperature`` (K), ``al_bias_energy`` (eV)."""
    seed = cfg.seed if seed is None else seed
    frames, trajectories = [], []
    for s_idx, start in enumerate(starts):
        ensemble.template.check_elements(start, s_idx)
        for t_idx, temperature in enumerate(cfg.temperatures):
            rng = np.random.default_rng([seed, s_idx, t_idx])
            traj, new = _trajectory(ensemble, start, cfg, s_idx, float(temperature), rng)
            trajectories.append(traj)
            frames.extend(new)
    return frames, trajectories


def _compiled(ensemble: Ensemble, start: Atoms, cfg: ExploreConfig, temperature: float) -> CommitteeMD:
    """The cached ``committee_md`` of this committee's architecture for this structure and config
    (biases hold Python callables: key on the settings that define them)."""
    biases = make_biases(cfg, len(start), temperature)
    key = ensemble.cache_key("explore", json.dumps(asdict(cfg), sort_keys=True, default=str),
                             tuple(start.numbers.tolist()), start.cell.array.tobytes(), tuple(start.pbc.tolist()),
                             float(temperature) if cfg.metadynamics else 0.0)
    return cached(key, lambda: committee_md(ensemble, start, cfg, biases))


def _trajectory(ensemble: Ensemble, start: Atoms, cfg: ExploreConfig, s_idx: int, temperature: float, rng):
    """One trajectory from ``start`` at ``temperature`` K: (Trajectory, frames)."""
    dtype = ensemble.dtype
    run = _compiled(ensemble, start, cfg, temperature)
    key = jax.random.PRNGKey(int(rng.integers(2**31)))
    masses = start.get_masses()
    v = maxwell_boltzmann(masses, temperature, seed=int(rng.integers(2**31)))  # Å/fs
    x = jnp.asarray(start.positions, dtype)
    traced = (ensemble.variables, jnp.asarray(temperature, dtype), jnp.asarray(ensemble.std_scale, dtype))
    nbrs = run.neighbor_fn.allocate(x)
    state = run.init(*traced[:2], x, jnp.asarray(v, dtype), jnp.asarray(masses, dtype), nbrs, key,
                     tuple(b.init_state(dtype) for b in run.biases))
    frames, max_eps = [], [0.0]

    def on_block(st, recs, done, n):
        recs = StepRecord(*(np.asarray(r) for r in recs))
        taken = np.flatnonzero(recs.taken)
        stopped = bool(st.stopped)
        for i in taken:
            max_eps[0] = max(max_eps[0], float(recs.eps[i]))
            if recs.step[i] % cfg.stride == 0 or (stopped and i == taken[-1]):
                frames.append(_frame(start, recs, i, run.biases, s_idx, temperature))
        return not stopped

    result = run_blocks(lambda st, nb, n: run.block(st, nb, n, *traced), state, nbrs, run.neighbor_fn,
                        cfg.steps, cfg.chunk, on_block)
    steps_done = int(result.state.step)
    return Trajectory(s_idx, temperature, steps_done, bool(result.state.stopped), max_eps[0],
                      result.n_reallocations), frames


def _frame(start: Atoms, recs: StepRecord, i: int, biases, s_idx: int, temperature: float) -> Atoms:
    a = Atoms(start.numbers, positions=np.asarray(recs.positions[i], np.float64), cell=start.cell, pbc=start.pbc)
    a.info.update({
        "al_eps": float(recs.eps[i]), "max_force_std": float(recs.max_force_std[i]),
        "max_rel_force_std": float(recs.max_rel_force_std[i]),
        "energy_std_per_atom": float(recs.energy_std_per_atom[i]),
        "al_start": s_idx, "al_temperature": float(temperature), "al_step": int(recs.step[i]),
        "al_md_temperature": float(recs.temperature[i]), "al_bias_energy": float(recs.bias_energy[i]),
    })
    if biases and hasattr(biases[0], "cv_values"):
        a.info["al_cv"] = np.asarray(biases[0].cv_values(jnp.asarray(a.positions))).tolist()
    return a
