"""Short-range pair repulsion: the ZBL universal screened nuclear repulsion (Ziegler, Biersack and
Littmark, *The Stopping and Range of Ions in Solids*, 1985), switched off smoothly between two radii
derived from covalent radii. A fixed, untrained part of the energy (``model.pair_repulsion: zbl``):
where the training data have atoms this close it is learnt around; where they do not, it keeps two
atoms pushed together from collapsing.

    V(r) = k_e Z_i Z_j / r · φ(r / a),   a = 0.8854 a_0 / (Z_i^0.23 + Z_j^0.23)
    φ(x) = 0.18175 e^{−3.19980 x} + 0.50986 e^{−0.94229 x} + 0.28022 e^{−0.40290 x} + 0.02817 e^{−0.20162 x}
    E_pair(r) = s(r) V(r),  s = 1 below r_in, 0 beyond r_out, C² quintic in between

r_in = ``INNER`` · (R_i + R_j) and r_out = ``OUTER`` · (R_i + R_j), R = ``ase.data.covalent_radii``
(Cordero et al. 2008; H 0.31, C 0.76, N 0.71, O 0.66 Å). A bond is about R_i + R_j long, so the term
is exactly zero from 0.8 of a bond length outwards (molecular data near equilibrium rarely go below
0.9: rMD17 ethanol's shortest C–H is 0.91 of R_C + R_H) and is the full ZBL below half a bond length.
s(r) V(r) decreases monotonically for every r (s' ≤ 0, V' < 0, V > 0).

A model trained on data moves r_out of each pair out to ``DATA_MARGIN`` (0.9) of the shortest
distance of that pair in the data where that is farther (``outer_radii_from_data``,
``model.pair_repulsion_outer``). A pair that never bonds in the data (H–H in ethanol: 1.45 Å at the
closest) leaves the network free between 0.8 of a bond and the data, and networks do dip there; the
term then covers nearly all the distance the data never reached, and is zero at every pair the data
hold. Why not r_out at the shortest distance itself: test frames of the same distribution come a
little closer than the training set's closest pair, and the switch is steep there (an rMD17 ethanol
NequIP's test force RMSE went from 39.6 to 43.8 meV/Å; with 0.95 or 0.9 it is unchanged to 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import itertools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols, covalent_radii

from nnpes.graph.distances import pair_name

COULOMB = 14.399645  # e²/(4π ε_0) in eV·Å
BOHR = 0.529177210903  # Å
SCREENING_COEFFS = (0.18175, 0.50986, 0.28022, 0.02817)  # sum to 1: φ(0) = 1, bare Coulomb at r → 0
SCREENING_EXPS = (3.19980, 0.94229, 0.40290, 0.20162)
INNER = 0.5  # r_in / (R_i + R_j): full ZBL below
OUTER = 0.8  # r_out / (R_i + R_j): exactly zero beyond
DATA_MARGIN = 0.9  # r_out may move out to this fraction of the data's shortest distance of the pair


def zbl_potential(r, z_i, z_j):
    """ZBL V(r) in eV for distances ``r`` (Å) between nuclei of charges ``z_i``, ``z_j`` (broadcast)."""
    a = 0.8854 * BOHR / (z_i**0.23 + z_j**0.23)
    x = r / a
    phi = sum(c * jnp.exp(-d * x) for c, d in zip(SCREENING_COEFFS, SCREENING_EXPS))
    return COULOMB * z_i * z_j / r * phi


def switch(r, r_in, r_out):
    """1 for r ≤ r_in, 0 for r ≥ r_out, 1 − 10t³ + 15t⁴ − 6t⁵ in between (t = (r − r_in)/(r_out − r_in)):
    value, first and second derivative continuous at both radii."""
    t = jnp.clip((r - r_in) / (r_out - r_in), 0.0, 1.0)
    return 1.0 - t**3 * (10.0 - 15.0 * t + 6.0 * t**2)


def pair_keys(numbers) -> list[tuple[int, int, str]]:
    """(i, j, "A-B") for each element pair i ≤ j of a model's atomic ``numbers``, named by
    ``nnpes.graph.distances.pair_name`` (the keys of the training data's shortest distances)."""
    symbols = [chemical_symbols[int(z)] for z in numbers]
    return [(i, j, pair_name(numbers[i], numbers[j], symbols))
            for i, j in itertools.combinations_with_replacement(range(len(symbols)), 2)]


def switching_radii(numbers, outer: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(r_in, r_out), each (S, S) Å, for the model's atomic ``numbers`` (S,); ``outer`` (Å per
    pair, "H-C") replaces the covalent r_out of the pairs it names."""
    radii = covalent_radii[np.asarray(numbers)]
    bond = radii[:, None] + radii[None, :]
    r_in, r_out = INNER * bond, OUTER * bond
    for i, j, key in pair_keys(numbers):
        if outer and key in outer:
            r_out[i, j] = r_out[j, i] = float(outer[key])
    return r_in, r_out


def outer_radii_from_data(shortest: Mapping[str, float], numbers) -> dict[str, float]:
    """r_out (Å) for every element pair: the farther of 0.8·(R_i + R_j) and ``DATA_MARGIN`` × the
    pair's ``shortest`` distance in the training data (``nnpes.graph.distances.shortest_distances``)."""
    _, r_out = switching_radii(numbers)
    return {key: round(max(float(r_out[i, j]), DATA_MARGIN * float(shortest.get(key, 0.0))), 4)
            for i, j, key in pair_keys(numbers)}


@dataclass(frozen=True)
class ZBLRepulsion:
    """The switched ZBL pair term for a model of atomic ``numbers`` (one per species index).
    No parameters: a saved model keeps only the config keys. Hashable, so a module holding it is a
    valid static jit argument and compile-cache key."""

    numbers: tuple[int, ...]
    outer: tuple[tuple[str, float], ...] = ()  # r_out per pair where not covalent (switching_radii)

    def __call__(self, vectors, species, senders, receivers, edge_mask):
        """(N,) eV: half of each pair's s·V on each of its two atoms (the neighbour list holds both
        directions). vectors (E, 3) Å; species (N,); senders, receivers (E,); edge_mask (E,) bool.
        Padding edges and pairs beyond r_out contribute exactly zero, and so do their gradients."""
        dtype = vectors.dtype
        z = jnp.asarray(self.numbers, dtype)
        r_in, r_out = (jnp.asarray(x, dtype) for x in switching_radii(self.numbers, dict(self.outer)))
        s_i, s_j = species[receivers], species[senders]
        r_in, r_out = r_in[s_i, s_j], r_out[s_i, s_j]
        inside = edge_mask & (jnp.sum(vectors**2, axis=-1) < r_out**2)
        # Outside, the vector is replaced by one of length r_out: no 0/0 in the gradient on padding edges.
        safe = jnp.where(inside[:, None], vectors, r_out[:, None] * jnp.asarray([1.0, 0.0, 0.0], dtype))
        r = jnp.sqrt(jnp.sum(safe**2, axis=-1))
        e = switch(r, r_in, r_out) * zbl_potential(r, z[s_i], z[s_j])
        e = jnp.where(inside, 0.5 * e, 0.0)
        return jax.ops.segment_sum(e, receivers, species.shape[0])
