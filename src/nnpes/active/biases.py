"""Collective variables and biases for enhanced sampling, as energy-function wrappers.

The committee energy function is ``member_fn(positions, **kw) -> (E_k (K,) eV, F_k (K, N, 3) eV/Å)``
(``nnpes.md.CommitteeEnergyFn.member_energies_and_forces``, ``kw``: ``neighbor=nbrs``).
A bias is a pure function ``V(positions, E_k, state) -> eV`` plus a state update, and
``biased(member_fn, biases)`` returns a new function giving the biased total energy and forces:

    E = mean_k E_k + Σ_b V_b,     F = mean_k F_k − ∂V/∂R + Σ_k (∂V/∂E_k) F_k

(chain rule through E_k(R), reusing the members' forces instead of differentiating the
committee twice). Metadynamics depends on R through collective variables; the uncertainty bias
depends on R only through the members' energies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from ase.units import kB

# ---- collective variables: positions (N, 3) Å → scalar -----------------------------------------


@dataclass(frozen=True)
class CV:
    name: str
    fn: Callable  # positions (N, 3) -> scalar
    periodic: bool = False  # angles in radians with period 2π (dihedral)
    unit: str = "Å"


def _norm(v):
    return jnp.sqrt(jnp.sum(v * v, axis=-1))


def distance(i: int, j: int) -> CV:
    """|r_j − r_i| in Å."""
    return CV(f"d({i},{j})", lambda x: _norm(x[j] - x[i]))


def distance_difference(i: int, j: int, k: int, m: int) -> CV:
    """d(i,j) − d(k,m) in Å: the proton-transfer coordinate (donor–H minus acceptor–H)."""
    return CV(f"d({i},{j})-d({k},{m})", lambda x: _norm(x[j] - x[i]) - _norm(x[m] - x[k]))


def angle(i: int, j: int, k: int) -> CV:
    """Angle i–j–k at j, radians in [0, π]; arctan2 form stays differentiable near 0 and π."""

    def fn(x):
        a, b = x[i] - x[j], x[k] - x[j]
        return jnp.arctan2(_norm(jnp.cross(a, b)), jnp.dot(a, b))

    return CV(f"angle({i},{j},{k})", fn, unit="rad")


def dihedral(i: int, j: int, k: int, m: int) -> CV:
    """Dihedral i–j–k–m, radians in (−π, π], periodic."""

    def fn(x):
        b0, b1, b2 = x[j] - x[i], x[k] - x[j], x[m] - x[k]
        n1, n2 = jnp.cross(b0, b1), jnp.cross(b1, b2)
        m1 = jnp.cross(n1, b1 / _norm(b1))
        return jnp.arctan2(jnp.dot(m1, n2), jnp.dot(n1, n2))

    return CV(f"dihedral({i},{j},{k},{m})", fn, periodic=True, unit="rad")


def coordination(group_a: Sequence[int], group_b: Sequence[int], r0: float, n: int = 6, m: int = 12) -> CV:
    """Σ_{a∈A, b∈B, a≠b} s(r_ab), s(r) = (1 − (r/r0)^n) / (1 − (r/r0)^m) (PLUMED's rational switch;
    dimensionless). At r = r0 the limit n/m is used, with its finite gradient."""
    a = jnp.asarray(group_a)
    b = jnp.asarray(group_b)

    def fn(x):
        d = _norm(x[b][None, :, :] - x[a][:, None, :])
        q = d / r0
        near = jnp.abs(q - 1.0) < 1e-4
        qs = jnp.where(near, 0.5, q)
        s = (1.0 - qs**n) / (1.0 - qs**m)
        # second-order expansion around q = 1 keeps value and slope right where the ratio is 0/0
        e = q - 1.0
        s_near = n / m + e * n * (n - m) / (2.0 * m)
        s = jnp.where(near, s_near, s)
        same = a[:, None] == b[None, :]
        return jnp.sum(jnp.where(same, 0.0, s))

    return CV(f"coordination(r0={r0})", fn, unit="1")


def make_cv(spec: dict) -> CV:
    """From config: ``{type: distance, atoms: [i, j]}``; types distance, distance_difference,
    angle, dihedral, coordination (``group_a``, ``group_b``, ``r0``, optional ``n``, ``m``)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    makers = {"distance": (distance, 2), "distance_difference": (distance_difference, 4), "angle": (angle, 3),
              "dihedral": (dihedral, 4)}
    if kind in makers:
        fn, n_atoms = makers[kind]
        atoms = spec.pop("atoms", None)
        if atoms is None or len(atoms) != n_atoms or spec:
            raise ValueError(f"collective variable {kind!r}: give exactly 'atoms' with {n_atoms} indices (got {atoms}, extra {sorted(spec)})")
        return fn(*[int(i) for i in atoms])
    if kind == "coordination":
        return coordination(spec.pop("group_a"), spec.pop("group_b"), float(spec.pop("r0")), **spec)
    raise ValueError(f"collective variable type {kind!r}: expected one of {sorted(makers) + ['coordination']}")


# ---- biases ------------------------------------------------------------------------------------


class MetaDState(NamedTuple):
    centers: jnp.ndarray  # (H, D) CV values of deposited hills
    heights: jnp.ndarray  # (H,) eV (0 for empty slots)
    count: jnp.ndarray  # () int, hills deposited so far


@dataclass(frozen=True)
class WellTemperedMetaD:
    """Well-tempered metadynamics (Barducci, Bussi, Parrinello 2008) on D collective variables.

    Every ``pace`` steps a Gaussian of width ``sigma`` (per CV, CV units) is added at the current
    CV values with height w·exp(−V(s)/(k_B ΔT)), ΔT = T(γ − 1) for bias factor γ, initial height
    w (eV). Storage is fixed (``max_hills``); once full no further hills are added."""

    cvs: tuple
    sigma: tuple
    height: float = 0.05  # eV
    pace: int = 50  # MD steps between hills
    bias_factor: float = 10.0  # γ
    temperature: float = 300.0  # K
    max_hills: int = 1000

    def cv_values(self, positions):
        return jnp.stack([cv.fn(positions) for cv in self.cvs])

    def init_state(self, dtype=jnp.float32) -> MetaDState:
        d = len(self.cvs)
        return MetaDState(jnp.zeros((self.max_hills, d), dtype), jnp.zeros((self.max_hills,), dtype), jnp.zeros((), jnp.int32))

    def _potential(self, state: MetaDState, s):
        diff = s[None, :] - state.centers
        period = jnp.asarray([2 * jnp.pi if cv.periodic else 0.0 for cv in self.cvs], s.dtype)
        diff = jnp.where(period > 0, diff - period * jnp.round(diff / jnp.where(period > 0, period, 1.0)), diff)
        z = diff / jnp.asarray(self.sigma, s.dtype)
        return jnp.sum(state.heights * jnp.exp(-0.5 * jnp.sum(z * z, axis=-1)))

    def energy(self, positions, member_energies, state: MetaDState):
        return self._potential(state, self.cv_values(positions))

    def update(self, positions, member_energies, state: MetaDState, step):
        s = self.cv_values(positions)
        delta_t = self.temperature * (self.bias_factor - 1.0)
        h = self.height * jnp.exp(-self._potential(state, s) / (kB * delta_t))
        deposit = (step % self.pace == self.pace - 1) & (state.count < self.max_hills)
        idx = jnp.minimum(state.count, self.max_hills - 1)
        centers = jnp.where(deposit, state.centers.at[idx].set(s), state.centers)
        heights = jnp.where(deposit, state.heights.at[idx].set(h.astype(state.heights.dtype)), state.heights)
        return MetaDState(centers, heights, state.count + deposit.astype(jnp.int32))


@dataclass(frozen=True)
class UncertaintyBias:
    """Uncertainty-driven dynamics (Kulichenko et al., Nat. Comput. Sci. 2023):
    V = A [exp(−σ_E² / (N B²)) − 1] ≤ 0, lowest where the committee's energy standard deviation σ_E
    is large, so the dynamics drifts towards disagreement. A (eV) is the depth, B (eV) the
    per-atom σ_E scale. σ_E² (the variance over members, eV²) is computed from E_k."""

    strength: float = 0.5  # A, eV
    width: float = 0.05  # B, eV
    n_atoms: int = 1

    def init_state(self, dtype=jnp.float32):
        return ()

    def energy(self, positions, member_energies, state):
        energy_var = jnp.mean(jnp.square(member_energies - jnp.mean(member_energies)))
        return self.strength * (jnp.exp(-energy_var / (self.n_atoms * self.width**2)) - 1.0)

    def update(self, positions, member_energies, state, step):
        return state


def biased(member_fn: Callable, biases: Sequence) -> Callable:
    """Wrap ``member_fn(positions, **kw) -> (E_k, F_k)`` (e.g. ``CommitteeEnergyFn.
    member_energies_and_forces``) into ``fn(positions, states, **kw) -> dict`` with the
    biased ``energy`` and ``forces`` (what MD integrates), ``bias_energy`` (eV) and the unbiased
    ``member_energy`` (K,) and ``member_forces`` (K, N, 3) (what uncertainty is measured on);
    ``kw`` (``neighbor=nbrs``, ``params=``) go to ``member_fn``."""
    biases = tuple(biases)

    def fn(positions, states, **kwargs):
        e_k, f_k = member_fn(positions, **kwargs)
        energy, forces = jnp.mean(e_k), jnp.mean(f_k, axis=0)
        bias_energy = jnp.zeros((), positions.dtype)
        for b, st in zip(biases, states):
            v, (dv_dr, dv_de) = jax.value_and_grad(b.energy, argnums=(0, 1))(positions, e_k, st)
            bias_energy = bias_energy + v
            # ∂E_k/∂R = −F_k
            forces = forces - dv_dr + jnp.einsum("k,kni->ni", dv_de, f_k)
        return {"energy": energy + bias_energy, "forces": forces, "bias_energy": bias_energy,
                "member_energy": e_k, "member_forces": f_k}

    return fn


def update_states(biases: Sequence, states, positions, member_energies, step):
    return tuple(b.update(positions, member_energies, s, step) for b, s in zip(biases, states))
