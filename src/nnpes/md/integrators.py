"""Integrators: velocity Verlet (NVE), Langevin BAOAB (NVT), Nosé–Hoover chain (NVT), Langevin with
stochastic cell rescaling (NPT).

Units: positions Å, velocities Å/fs, time fs, masses amu, energies eV, temperatures K.
An acceleration F/m in eV/(Å·amu) is ``ACCEL`` Å/fs² per unit; a kinetic energy m v²/2 in
amu·Å²/fs² is ``1/ACCEL`` eV per unit (ase.units: 1 fs = units.fs in ase's time unit).

Every integrator is a pair of pure functions in jax-md's style,

    init_fn(positions, velocities, masses, nbrs, key) -> MDState
    step_fn(state, nbrs) -> (state, nbrs)

with ``energy_and_forces(R, neighbor=nbrs) -> (E, F)`` (``EnergyFn.energy_and_forces``). The step
updates the neighbour list after moving the atoms; use ``run_steps`` to run a block under
``lax.scan``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from nnpes.graph.verlet import update_neighbor_list

ACCEL = units.fs**2  # (eV/Å/amu) → Å/fs²
KB = units.kB  # eV/K


class MDState(NamedTuple):
    """positions (N,3) Å, velocities (N,3) Å/fs, forces (N,3) eV/Å, energy () eV (potential),
    masses (N,) amu, key: PRNG key, thermostat: integrator-specific extra state (a PyTree);
    cell (3,3) Å in variable-cell (NPT) runs, None when the cell is fixed."""

    positions: jnp.ndarray
    velocities: jnp.ndarray
    forces: jnp.ndarray
    energy: jnp.ndarray
    masses: jnp.ndarray
    key: jnp.ndarray
    thermostat: Any = ()
    cell: Any = None


class Integrator(NamedTuple):
    """conserved_energy(state) -> () eV: the quantity the dynamics conserves (for Langevin, the
    total energy less the heat the thermostat put in)."""

    init_fn: Callable
    step_fn: Callable
    name: str = ""
    conserved_energy: Callable | None = None


def kinetic_energy(velocities, masses):
    """() eV from velocities (N,3) Å/fs and masses (N,) amu."""
    return 0.5 * jnp.sum(masses[:, None] * velocities**2) / ACCEL


def kinetic_stress(velocities, masses, volume):
    """(3,3) eV/Å³: −(1/V) Σ m v⊗v, the ideal-gas term of the stress (ase's sign, as
    ``Atoms.get_stress(include_ideal_gas=True)``); velocities (N,3) Å/fs, masses (N,) amu, V Å³."""
    return -jnp.einsum("i,ia,ib->ab", masses, velocities, velocities) / (ACCEL * volume)


def temperature(velocities, masses):
    """() K, with 3N degrees of freedom (as ase's ``get_temperature``)."""
    return 2.0 * kinetic_energy(velocities, masses) / (3 * masses.shape[0] * KB)


def maxwell_boltzmann(masses, temperature_K: float, seed: int = 0, dtype=np.float64) -> np.ndarray:
    """(N,3) Å/fs velocities drawn at ``temperature_K`` with the centre-of-mass momentum removed."""
    masses = np.asarray(masses, np.float64)
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(KB * temperature_K * ACCEL / masses)  # Å/fs
    v = rng.normal(size=(len(masses), 3)) * sigma[:, None]
    v -= (masses[:, None] * v).sum(0) / masses.sum()
    return v.astype(dtype)


def _init(energy_and_forces):
    def init_fn(positions, velocities, masses, nbrs, key=None, thermostat=()):
        e, f = energy_and_forces(positions, neighbor=nbrs)
        key = jax.random.PRNGKey(0) if key is None else key
        return MDState(positions, velocities.astype(positions.dtype), f, e, masses.astype(positions.dtype),
                       key, thermostat)

    return init_fn


def _kick(state: MDState, dt):
    return state._replace(velocities=state.velocities + dt * ACCEL * state.forces / state.masses[:, None])


def _drift(state: MDState, dt):
    return state._replace(positions=state.positions + dt * state.velocities)


def _forces(energy_and_forces, state: MDState, nbrs):
    nbrs = nbrs.update(state.positions)
    e, f = energy_and_forces(state.positions, neighbor=nbrs)
    return state._replace(energy=e, forces=f), nbrs


def _thermalize(state: MDState, c1, c2, kT):
    """BAOAB's O step, v ← c1·v + c2·sqrt(kT/m)·ξ: (state, heat () eV it put in, the change of
    the kinetic energy)."""
    key, noise_key = jax.random.split(state.key)
    noise = jax.random.normal(noise_key, state.velocities.shape, state.velocities.dtype)
    sigma = jnp.sqrt(kT * ACCEL / state.masses)[:, None]  # Å/fs
    v = c1 * state.velocities + c2 * sigma * noise
    heat = kinetic_energy(v, state.masses) - kinetic_energy(state.velocities, state.masses)
    return state._replace(velocities=v, key=key), heat


def velocity_verlet(energy_and_forces, dt: float) -> Integrator:
    """NVE, time step ``dt`` fs."""

    def step_fn(state, nbrs):
        state = _drift(_kick(state, 0.5 * dt), dt)
        state, nbrs = _forces(energy_and_forces, state, nbrs)
        return _kick(state, 0.5 * dt), nbrs

    def total_energy(state):
        return state.energy + kinetic_energy(state.velocities, state.masses)

    return Integrator(_init(energy_and_forces), step_fn, "nve", total_energy)


def langevin(energy_and_forces, dt: float, temperature_K: float, friction: float = 0.01) -> Integrator:
    """NVT by BAOAB Langevin (Leimkuhler & Matthews 2013); ``friction`` γ in 1/fs.
    ``state.thermostat`` is the heat () eV the thermostat has put in (the kinetic energy its O steps
    changed), so ``conserved_energy`` = E_pot + E_kin − heat is the effective energy of Bussi &
    Parrinello (2007), constant up to the integrator's error."""
    c1 = float(np.exp(-friction * dt))
    c2 = float(np.sqrt(1.0 - c1 * c1))
    kT = KB * temperature_K
    base_init = _init(energy_and_forces)

    def init_fn(positions, velocities, masses, nbrs, key=None, thermostat=None):
        return base_init(positions, velocities, masses, nbrs, key, jnp.zeros((), positions.dtype))

    def step_fn(state, nbrs):
        state, heat = _thermalize(_drift(_kick(state, 0.5 * dt), 0.5 * dt), c1, c2, kT)
        state = _drift(state._replace(thermostat=state.thermostat + heat), 0.5 * dt)
        state, nbrs = _forces(energy_and_forces, state, nbrs)
        return _kick(state, 0.5 * dt), nbrs

    def conserved_energy(state):
        return state.energy + kinetic_energy(state.velocities, state.masses) - state.thermostat

    return Integrator(init_fn, step_fn, "langevin", conserved_energy)


class ChainState(NamedTuple):
    """Nosé–Hoover chain: positions ξ (M,) and velocities v_ξ (M,) 1/fs of the thermostats."""

    xi: jnp.ndarray
    v_xi: jnp.ndarray


def _chain_sweep(v_xi: list, order, d, q, kT, ke2, n_dof) -> list:
    """One sweep of thermostat kicks over the chain in ``order``: v_k ← (v_k·e^(−d v_{k+1}/2) + d G_k)
    ·e^(−d v_{k+1}/2), with G_0 = (2 E_kin − N_f kT)/Q_0 and G_k = (Q_{k−1} v_{k−1}² − kT)/Q_k."""
    m = len(v_xi)
    for k in order:
        damp = jnp.exp(-0.5 * d * v_xi[k + 1]) if k < m - 1 else 1.0
        g = (ke2 - n_dof * kT) / q[0] if k == 0 else (q[k - 1] * v_xi[k - 1] ** 2 - kT) / q[k]
        v_xi[k] = (v_xi[k] * damp + d * g) * damp
    return v_xi


def nose_hoover_chain(energy_and_forces, dt: float, temperature_K: float, tau: float = 100.0,
                      chain_length: int = 3) -> Integrator:
    """NVT by a Nosé–Hoover chain (Martyna, Tuckerman & Klein 1996), one Trotter split per step;
    ``tau`` fs is the thermostat period (masses Q₁ = N_f kT τ², Q_k = kT τ²).
    ``conserved_energy(state)`` (E_pot + E_kin + thermostat energy) should stay constant."""
    kT = KB * temperature_K
    m_chain = chain_length

    def masses_q(n_dof):
        return jnp.asarray([n_dof * kT * tau**2] + [kT * tau**2] * (m_chain - 1))

    def half_chain(state, n_dof):
        """Propagate the chain and scale the particle velocities over dt/2."""
        q = masses_q(n_dof).astype(state.velocities.dtype)
        xi, v_xi = state.thermostat
        ke2 = 2.0 * kinetic_energy(state.velocities, state.masses)  # eV
        d = 0.25 * dt  # each half step kicks v_ξ twice by dt/4
        v_xi = _chain_sweep([v_xi[i] for i in range(m_chain)], reversed(range(m_chain)), d, q, kT, ke2, n_dof)
        scale = jnp.exp(-0.5 * dt * v_xi[0])
        xi = xi + 0.5 * dt * jnp.stack(v_xi)
        v_xi = _chain_sweep(v_xi, range(m_chain), d, q, kT, ke2 * scale**2, n_dof)
        return state._replace(velocities=state.velocities * scale, thermostat=ChainState(xi, jnp.stack(v_xi)))

    base_init = _init(energy_and_forces)

    def init_fn(positions, velocities, masses, nbrs, key=None, thermostat=None):
        zeros = jnp.zeros(m_chain, positions.dtype)
        return base_init(positions, velocities, masses, nbrs, key, ChainState(zeros, zeros))

    def step_fn(state, nbrs):
        n_dof = 3 * state.masses.shape[0]
        state = half_chain(state, n_dof)
        state = _drift(_kick(state, 0.5 * dt), dt)
        state, nbrs = _forces(energy_and_forces, state, nbrs)
        state = _kick(state, 0.5 * dt)
        return half_chain(state, n_dof), nbrs

    def conserved_energy(state):
        n_dof = 3 * state.masses.shape[0]
        q = masses_q(n_dof)
        xi, v_xi = state.thermostat
        thermo = 0.5 * jnp.sum(q * v_xi**2) + n_dof * kT * xi[0] + kT * jnp.sum(xi[1:])
        return state.energy + kinetic_energy(state.velocities, state.masses) + thermo

    return Integrator(init_fn, step_fn, "nose-hoover", conserved_energy)


def run_steps(step_fn, state: MDState, nbrs, n_steps: int):
    """``n_steps`` steps under ``lax.scan`` (jit the caller). Returns (state, nbrs)."""

    def body(carry, _):
        return step_fn(*carry), None

    (state, nbrs), _ = jax.lax.scan(body, (state, nbrs), None, length=n_steps)
    return state, nbrs


class BarostatState(NamedTuple):
    """NPT extra state: heat () eV the Langevin thermostat put in, stress (3,3) eV/Å³ of the model
    at the last force evaluation (ase's sign), the barostat's next input, and work () eV the
    barostat's moves did on the enthalpy E_pot + E_kin + P₀V."""

    heat: jnp.ndarray
    stress: jnp.ndarray
    work: Any = 0.0


NPT_CELLS = ("isotropic", "flexible")


def check_npt_cell(cell: str) -> None:
    """ValueError unless ``cell`` is one of ``NPT_CELLS`` (``npt_langevin``'s cell coupling)."""
    if cell not in NPT_CELLS:
        raise ValueError(f"npt cell coupling must be 'isotropic' or 'flexible', got {cell!r}")


def npt_langevin(energy_forces_stress, dt: float, temperature_K: float, pressure_GPa: float,
                 friction: float = 0.01, tau_p: float = 1000.0, compressibility: float = 0.01,
                 update: Callable | None = None, cell: str = "isotropic") -> Integrator:
    """NPT: BAOAB Langevin for the atoms and isotropic stochastic cell rescaling (Bernetti & Bussi,
    J. Chem. Phys. 153, 114107 (2020)) for the volume, one barostat move per step. With ε = ln V,

        dε = −(β/τ_p) (P₀ − P − kT/V) dt + sqrt(2 kT β / (V τ_p)) dW,

    positions and cell scaled by e^(Δε/3), velocities by its inverse. P (model virial + kinetic
    term) is the one of the last force evaluation; ``pressure_GPa`` P₀; ``tau_p`` fs the volume's
    relaxation time; ``compressibility`` β 1/GPa, a guess of the material's (metals ~0.01,
    water 0.45): a wrong one changes only how fast the volume relaxes, not the ensemble.
    ``energy_forces_stress(R, neighbor=, cell=)`` is ``EnergyFn.energy_forces_stress``; the list
    follows the cell (``update(R, nbrs, box=cell)``, from ``md_functions(..., variable_cell=True)``).
    ``state.cell`` is the cell.

    ``conserved_energy`` = E_pot + E_kin + P₀V − heat − work, the effective energy of Bernetti & Bussi:
    a barostat move changes the enthalpy by ΔE_kin + P₀ΔV (exact) + ΔE_pot, the last by the
    trapezoid rule along the strain, ½(V σ_before + V σ_after) : Δε with the model stresses of the
    force calls on either side of the move. The trapezoid keeps the second-order (Itô) part of
    ΔE_pot, which a first-order estimate would leave as a drift of ~kT·dt/τ_p per step; what is
    left drifts as the integrator's error does (halving dt divides it by ~4, tested).

    ``cell="flexible"``: every cell length and angle moves (the anisotropic scheme of Del Tatto,
    Raiteri, Bernetti and Bussi, Appl. Sci. 12, 1139 (2022)), with a symmetric strain increment

        dε = (β/3τ_p) (P_sym + (kT/V − P₀) 1) dt + sqrt(2 kT β/(3 V τ_p)) (dW + dWᵀ)/2,

    P_sym the symmetrised pressure tensor; positions, velocities and cell transformed by e^{dε}
    (its inverse for velocities). Symmetric: no rotation of the cell. β/3 per component, so the
    volume, tr dε, moves exactly as in the isotropic scheme; the shape relaxes on the same τ_p."""
    check_npt_cell(cell)
    update = update_neighbor_list if update is None else update
    c1 = float(np.exp(-friction * dt))
    c2 = float(np.sqrt(1.0 - c1 * c1))
    kT = KB * temperature_K
    p0 = pressure_GPa * units.GPa  # eV/Å³
    beta = compressibility / units.GPa  # Å³/eV

    def init_fn(positions, velocities, masses, nbrs, key=None, thermostat=None):
        cell = nbrs.box
        e, f, stress = energy_forces_stress(positions, neighbor=nbrs, cell=cell)
        key = jax.random.PRNGKey(0) if key is None else key
        zero = jnp.zeros((), positions.dtype)
        extra = BarostatState(zero, stress, zero)
        return MDState(positions, velocities.astype(positions.dtype), f, e, masses.astype(positions.dtype),
                       key, extra, cell)

    def rescale(state):
        """One barostat move over dt: positions, velocities and cell strained together by e^{Δε}.
        Returns (state, Δε (3,3), the enthalpy change known before the next force call, eV)."""
        volume = jnp.abs(jnp.linalg.det(state.cell))
        total = state.thermostat.stress + kinetic_stress(state.velocities, state.masses, volume)
        key, noise_key = jax.random.split(state.key)
        d_eps = flexible_strain(-0.5 * (total + total.T), volume, noise_key) if cell == "flexible" \
            else isotropic_strain(-jnp.trace(total) / 3.0, volume, noise_key)
        mu = jax.scipy.linalg.expm(d_eps)  # symmetric: row vectors r ↦ r μ
        moved = state._replace(positions=state.positions @ mu, velocities=state.velocities @ jnp.linalg.inv(mu),
                               cell=state.cell @ mu, key=key)
        d_kin = kinetic_energy(moved.velocities, state.masses) - kinetic_energy(state.velocities, state.masses)
        d_volume = jnp.abs(jnp.linalg.det(moved.cell)) - volume
        return moved, d_eps, d_kin + p0 * d_volume + 0.5 * volume * jnp.sum(state.thermostat.stress * d_eps)

    def isotropic_strain(pressure, volume, noise_key):
        noise = jax.random.normal(noise_key, (), pressure.dtype)
        d_ln_v = (-(beta / tau_p) * (p0 - pressure - kT / volume) * dt
                  + jnp.sqrt(2.0 * kT * beta * dt / (volume * tau_p)) * noise)
        return jnp.eye(3, dtype=pressure.dtype) * d_ln_v / 3.0

    def flexible_strain(p_sym, volume, noise_key):
        dtype = p_sym.dtype
        w = jax.random.normal(noise_key, (3, 3), dtype)
        rate = beta / (3.0 * tau_p)
        return (rate * (p_sym + (kT / volume - p0) * jnp.eye(3, dtype=dtype)) * dt
                + jnp.sqrt(2.0 * kT * rate * dt / volume) * 0.5 * (w + w.T))

    def step_fn(state, nbrs):
        state, heat = _thermalize(_drift(_kick(state, 0.5 * dt), 0.5 * dt), c1, c2, kT)
        state = _drift(state._replace(thermostat=state.thermostat._replace(heat=state.thermostat.heat + heat)), 0.5 * dt)
        state, d_eps, work = rescale(state)
        nbrs = update(state.positions, nbrs, state.cell)
        e, f, stress = energy_forces_stress(state.positions, neighbor=nbrs, cell=state.cell)
        work = work + 0.5 * jnp.abs(jnp.linalg.det(state.cell)) * jnp.sum(stress * d_eps)
        baro = state.thermostat._replace(stress=stress, work=state.thermostat.work + work)
        state = state._replace(energy=e, forces=f, thermostat=baro)
        return _kick(state, 0.5 * dt), nbrs

    def conserved_energy(state):
        enthalpy = state.energy + kinetic_energy(state.velocities, state.masses) + p0 * jnp.abs(jnp.linalg.det(state.cell))
        return enthalpy - state.thermostat.heat - state.thermostat.work

    name = "npt-langevin" if cell == "isotropic" else "npt-langevin-flexible"
    return Integrator(init_fn, step_fn, name, conserved_energy)
