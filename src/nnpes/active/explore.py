"""Committee MD for exploration: Langevin (BAOAB) dynamics on the committee mean, optionally biased,
with the disagreement computed inside the jitted step and a trajectory stopped as soon as it passes
the upper trust level (beyond it the model is lost and further steps only produce garbage).

The graph is built on the host with a Verlet skin (cutoff + skin) and kept for a chunk of steps
run by one ``lax.scan``; a replica that moves any atom more than skin/2 pauses until the host
rebuilds the neighbour list, so no pair inside the cutoff is ever missed. Edges between cutoff and
cutoff + skin contribute zero because every model's envelope is zero beyond its cutoff.
Positions are Cartesian and never wrapped, so collective variables see continuous distances.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from nnpes import keys
from nnpes.active.biases import UncertaintyBias, biased, update_states
from nnpes.active.ensemble import Ensemble
from nnpes.config.active import ExploreConfig
from nnpes.active.uncertainty import force_std
from nnpes.graph import atoms_to_graph, pad_to_bucket, to_device
from nnpes.potential.compiled import cached
from nnpes.md.integrators import KB, kinetic_energy, langevin, maxwell_boltzmann
from nnpes.potential import per_atom_energies


def make_biases(cfg: ExploreConfig, n_atoms: int, temperature: float) -> tuple:
    """Bias objects from the config for one trajectory (metadynamics' ΔT uses its temperature)."""
    from nnpes.active.biases import WellTemperedMetaD, make_cv

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


def _member_fn(ensemble: Ensemble, variables, graph):
    """positions (N,3) → (E_k (K,), F_k (K,N,3)) for the single structure in ``graph``."""
    module, table = ensemble.template.module, ensemble.template.table
    cell = graph.globals[keys.CELL]

    def energy(v, pos):
        return jnp.sum(per_atom_energies(module, table, v, graph, pos, cell))

    def fn(positions):
        e, g = jax.vmap(jax.value_and_grad(energy, argnums=1), in_axes=(0, None))(variables, positions)
        return e, -g

    return fn


class _FixedGraph(NamedTuple):
    """The integrators' neighbour-list slot: the chunk's graph (cutoff + skin) does not change."""

    graph: Any

    def update(self, positions):
        return self


def _make_chunk(ensemble: Ensemble, biases, cfg: ExploreConfig):
    nu = ensemble.nu
    stop_above = np.inf if cfg.stop_above is None else float(cfg.stop_above)
    relative = cfg.measure == "max_rel_force_std"

    def chunk(variables, graph, x, v, masses, temperature, key, states, step0, limit, std_scale):
        node_mask = jraph.get_node_padding_mask(graph)
        n_real = jnp.sum(node_mask)
        fn = biased(_member_fn(ensemble, variables, graph), biases)
        ref = x

        def energy_and_forces(states):
            # MDState.energy carries the committee's outputs along with the biased energy, so the
            # disagreement comes from the same evaluation that moved the atoms.
            def ef(positions, neighbor=None):
                out = fn(positions, states)
                return out, jnp.where(node_mask[:, None], out["forces"], 0.0)

            return ef

        def measures(out):
            f_std = jnp.where(node_mask, force_std(out["member_forces"]), 0.0) * std_scale
            mean_f = jnp.mean(out["member_forces"], axis=0)
            rel = f_std / (jnp.linalg.norm(mean_f, axis=-1) + nu)
            e_std = jnp.std(out["member_energy"]) / n_real * std_scale
            return jnp.max(f_std), jnp.max(rel), e_std

        nbrs = _FixedGraph(graph)
        init = langevin(energy_and_forces(states), cfg.timestep, temperature, cfg.friction).init_fn
        md0 = init(x, v, masses, nbrs, key)

        def step(carry, i):
            md, states, running, stopped = carry
            n = step0 + i
            integ = langevin(energy_and_forces(states), cfg.timestep, temperature, cfg.friction)
            md1, _ = integ.step_fn(md, nbrs)
            out = md1.energy
            eps_abs, eps_rel, e_std = measures(out)
            eps = eps_rel if relative else eps_abs
            new_states = update_states(biases, states, md1.positions, out["member_energy"], n)
            moved = jnp.max(jnp.where(node_mask, jnp.linalg.norm(md1.positions - ref, axis=-1), 0.0))
            # A step that leaves the skin is not taken: the host rebuilds the graph and redoes it.
            take = running & (i < limit) & ~(moved > 0.5 * cfg.skin)
            md, states = jax.tree_util.tree_map(lambda a, b: jnp.where(take, a, b), (md1, new_states), (md, states))
            now_stopped = take & (~jnp.isfinite(eps) | (eps > stop_above))
            stopped = stopped | now_stopped
            running = running & take & ~now_stopped
            v_real = jnp.where(node_mask[:, None], md.velocities, 0.0)
            rec = {"x": md.positions, "taken": take, "eps": eps, "max_force_std": eps_abs,
                   "max_rel_force_std": eps_rel, "energy_std_per_atom": e_std,
                   "energy": jnp.mean(out["member_energy"]), "bias_energy": out["bias_energy"],
                   "temperature": 2.0 * kinetic_energy(v_real, masses) / (3.0 * n_real * KB), "step": n}
            return (md, states, running, stopped), rec

        carry, recs = jax.lax.scan(step, (md0, states, jnp.array(True), jnp.array(False)), jnp.arange(cfg.chunk))
        md, states, _, stopped = carry
        return md.positions, md.velocities, md.key, states, stopped, recs

    return jax.jit(chunk)


@dataclass
class Trajectory:
    start: int
    temperature: float
    steps_done: int
    stopped: bool  # passed the upper trust level (or produced a non-finite ε)
    max_eps: float


def explore(ensemble: Ensemble, starts: Sequence[Atoms], cfg: ExploreConfig, *, seed: int | None = None):
    """Run one trajectory per (start, temperature). Returns (frames, trajectories): frames are
    ase.Atoms every ``stride`` steps plus the frame that stopped a trajectory, with
    ``info`` keys ``al_eps``, ``max_force_std`` (eV/Å), ``max_rel_force_std``, ``energy_std_per_atom``
    (eV/atom), ``al_cv`` (list, with metadynamics), ``al_start``, ``al_temperature`` (K), ``al_step``."""
    seed = cfg.seed if seed is None else seed
    dtype = ensemble.dtype
    frames, trajectories = [], []
    for s_idx, start in enumerate(starts):
        ensemble.template.check_elements(start, s_idx)
        for t_idx, temperature in enumerate(cfg.temperatures):
            biases = make_biases(cfg, len(start), temperature)
            # Biases hold Python callables; key the compiled chunk on the settings that define them.
            ck = ensemble.cache_key("explore", json.dumps(asdict(cfg), sort_keys=True, default=str),
                                    len(start) if cfg.uncertainty_bias else 0,
                                    float(temperature) if cfg.metadynamics else 0.0)
            run, biases = cached(ck, lambda: (_make_chunk(ensemble, biases, cfg), biases))
            rng = np.random.default_rng([seed, s_idx, t_idx])
            key = jax.random.PRNGKey(int(rng.integers(2**31)))
            masses = start.get_masses()
            v = maxwell_boltzmann(masses, temperature, seed=int(rng.integers(2**31)))  # velocities, Å/fs
            x = np.array(start.positions, np.float64)
            states = tuple(b.init_state(dtype) for b in biases)
            done, stopped, max_eps = 0, False, 0.0
            cfg_rebuilds = 0
            while done < cfg.steps and not stopped:
                now = Atoms(start.numbers, positions=x, cell=start.cell, pbc=start.pbc)
                graph = pad_to_bucket(atoms_to_graph(now, ensemble.cutoff + cfg.skin))
                n_pad = graph.nodes[keys.POSITIONS].shape[0]
                pad = lambda a: np.concatenate([a, np.zeros((n_pad - len(a),) + a.shape[1:])])
                m_pad = np.concatenate([masses, np.ones(n_pad - len(masses))])
                out = run(ensemble.variables, to_device(graph, dtype), jnp.asarray(pad(x), dtype),
                          jnp.asarray(pad(v), dtype), jnp.asarray(m_pad, dtype), jnp.asarray(temperature, dtype), key,
                          states, jnp.asarray(done, jnp.int32), jnp.asarray(cfg.steps - done, jnp.int32),
                          jnp.asarray(ensemble.std_scale, dtype))
                x_d, v_d, key, states, stopped_d, recs = out
                recs = jax.tree_util.tree_map(np.asarray, recs)
                taken = recs["taken"]
                n_taken = int(taken.sum())
                if n_taken == 0:
                    cfg_rebuilds += 1
                    if cfg_rebuilds > 3:
                        raise RuntimeError(
                            f"exploration from start {s_idx} at {temperature} K: an atom moves more than "
                            f"skin/2 = {cfg.skin / 2} Å in one step; lower explore.timestep or raise explore.skin"
                        )
                else:
                    cfg_rebuilds = 0
                stopped = bool(stopped_d)
                for i in np.flatnonzero(taken):
                    step = int(recs["step"][i]) + 1
                    last_stop = stopped and i == np.flatnonzero(taken)[-1]
                    max_eps = max(max_eps, float(recs["eps"][i]))
                    if step % cfg.stride == 0 or last_stop:
                        a = Atoms(start.numbers, positions=recs["x"][i][: len(start)], cell=start.cell, pbc=start.pbc)
                        a.info.update({
                            "al_eps": float(recs["eps"][i]), "max_force_std": float(recs["max_force_std"][i]),
                            "max_rel_force_std": float(recs["max_rel_force_std"][i]),
                            "energy_std_per_atom": float(recs["energy_std_per_atom"][i]),
                            "al_start": s_idx, "al_temperature": float(temperature), "al_step": step,
                            "al_md_temperature": float(recs["temperature"][i]),
                            "al_bias_energy": float(recs["bias_energy"][i]),
                        })
                        if biases and hasattr(biases[0], "cv_values"):
                            a.info["al_cv"] = np.asarray(biases[0].cv_values(jnp.asarray(a.positions))).tolist()
                        frames.append(a)
                done += n_taken
                x = np.asarray(x_d, np.float64)[: len(start)]
                v = np.asarray(v_d, np.float64)[: len(start)]
            trajectories.append(Trajectory(s_idx, float(temperature), done, stopped, max_eps))
    return frames, trajectories
