"""NequIP (Batzner et al., Nat. Commun. 2022): E(3)-equivariant message passing, per-atom energies.

One interaction layer, for node features h (irreps l ≤ l_max, ``features`` channels each):

    h  ← Linear(h)                                              per irrep, mixes channels
    m_i = 1/avg_num_neighbors Σ_j R(r_ij) ⊙ [h_j ⊗ Y(r̂_ij)]      "uvu" tensor product, one weight
                                                                 per (path, channel) from R
    R(r) = MLP_silu(Bessel(r) · u(r))                            u: polynomial envelope, no biases,
                                                                 so R and R' vanish at r_cut
    h  ← Gate(Linear(m) + SelfConnection(h, species))           silu / tanh on scalars, sigmoid gates

Species enter as a one-hot embedding (linear → scalars) and through the per-species
self-connection. The last layer computes only the even scalars the readout needs.

Parity: ``parity: true`` carries 0e+0o+1o+1e (full E(3): energies invariant under rotations and
reflections). ``parity: false`` carries 0e+1e with r̂ treated as even, so cross products map
vectors to vectors: rotation-equivariant only (SE(3)), chirality-aware, half the tensor-product
paths and radial weights.

Two implementations of the same architecture:
  * l_max = 1 (the standard size): the paths are written out as dot, cross and scaled-vector
    products with r̂, the radial weights multiplied in the same expression, one gather of sender
    features and one receiver-sorted ``segment_sum`` per layer (see /work/shared/PERFORMANCE.md).
  * any l_max (or ``implementation: e3nn``): e3nn-jax spherical harmonics, ``tensor_product``,
    ``flax.Linear`` and ``gate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from nnpes.models import register
from nnpes.models.radial import bessel_basis, polynomial_envelope, safe_norm

ACTIVATIONS = {"silu": jax.nn.silu, "tanh": jnp.tanh}


@dataclass
class NequIPHParams:
    """NequIP's defaults (our "standard size"); the radial MLP is 1 hidden layer of 128 (issue 3)."""

    num_layers: int = 4  # interaction layers
    features: int = 32  # channels per irrep
    l_max: int = 1  # highest rotation order of features and spherical harmonics
    parity: bool = True  # True: 0e+0o+1o+1e..., E(3); False: 0e+1e..., SE(3)
    num_bessel: int = 8  # radial Bessel functions
    radial_mlp_width: int = 128
    radial_mlp_depth: int = 1  # hidden layers of the radial MLP
    polynomial_p: int = 6  # envelope exponent
    activation: Literal["silu", "tanh"] = "silu"  # on even scalars (odd scalars: tanh)
    implementation: Literal["auto", "e3nn"] = "auto"  # auto: explicit l ≤ 1 kernels when l_max == 1

    def __post_init__(self):
        for name in ("num_layers", "features", "num_bessel", "radial_mlp_width", "polynomial_p"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.l_max < 0 or self.radial_mlp_depth < 0:
            raise ValueError("model.l_max and model.radial_mlp_depth must be ≥ 0")
        if self.polynomial_p < 2:
            raise ValueError(f"model.polynomial_p must be ≥ 2 for a smooth cutoff, got {self.polynomial_p}")


class RadialMLP(nn.Module):
    """(E, n_basis) enveloped basis → (E, out) weights. No biases and silu(0) = 0: zero basis in,
    zero weights out, so weights are smooth and vanish with the envelope at r_cut."""

    width: int
    depth: int
    out: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, basis):
        x = basis
        for k in range(self.depth):
            x = jax.nn.silu(nn.Dense(self.width, use_bias=False, dtype=self.dtype, param_dtype=self.dtype, name=f"hidden_{k}")(x))
        return nn.Dense(self.out, use_bias=False, dtype=self.dtype, param_dtype=self.dtype, name="out")(x)


def _edge_geometry(vectors, edge_mask, cutoff, hp):
    """Unit vectors (E, 3) (zero on padding) and enveloped Bessel basis (E, num_bessel) (zero on padding)."""
    r = safe_norm(vectors)
    unit = vectors / jnp.where(r > 0, r, 1.0)[:, None]
    env = polynomial_envelope(r, cutoff, hp.polynomial_p) * edge_mask
    basis = bessel_basis(r, cutoff, hp.num_bessel) * env[:, None]
    return jnp.where(edge_mask[:, None], unit, 0.0), basis


# ---------------------------------------------------------------- explicit l ≤ 1 implementation
# An irrep is (l, p). Features: scalars (N, C), vectors (N, 3, C). A path is (input, output, op):
#   "id":    h ⊗ Y0        (any l)      "vec":   s r̂   (l 0 → 1)
#   "dot":   v · r̂ (l 1 → 0)            "cross": v × r̂ (l 1 → 1)
# Output parity = input parity × parity of the harmonic used (Y0 even; r̂ odd iff hp.parity).
# Constants give each term unit variance for unit-variance inputs (e3nn "component" style).
_OP_SCALE = {"id": 1.0, "vec": math.sqrt(3.0), "dot": 1.0, "cross": math.sqrt(1.5)}


def _irreps(parity: bool):
    return [(0, 1), (0, -1), (1, -1), (1, 1)] if parity else [(0, 1), (1, 1)]


def _paths(inputs, outputs, parity: bool):
    p_r = -1 if parity else 1
    paths = []
    for l_in, p_in in inputs:
        ops = [("id", l_in, p_in)] + ([("vec", 1, p_in * p_r)] if l_in == 0 else [("dot", 0, p_in * p_r), ("cross", 1, p_in * p_r)])
        paths += [((l_in, p_in), (l, p), op) for op, l, p in ops if (l, p) in outputs]
    return paths


def _flatten(feats: dict, irreps) -> jnp.ndarray:
    return jnp.concatenate([feats[ir].reshape(feats[ir].shape[0], -1) for ir in irreps], axis=-1)


def _unflatten(x, irreps, c):
    out, k = {}, 0
    for l, p in irreps:
        width = c * (2 * l + 1)
        out[(l, p)] = x[:, k : k + width].reshape((x.shape[0], c) if l == 0 else (x.shape[0], 3, c))
        k += width
    return out


class SpeciesLinear(nn.Module):
    """Per-species linear map over channels (NequIP's self-connection, a tensor product with the
    one-hot species): x (N, [3,] C_in), onehot (N, Z) → (N, [3,] C_out), written as one GEMM."""

    out: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, onehot):
        z, c_in = onehot.shape[-1], x.shape[-1]
        oh = onehot if x.ndim == 2 else onehot[:, None, :]
        xz = (oh[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (z * c_in,))
        w = self.param("kernel", nn.initializers.normal(1.0 / math.sqrt(c_in)), (z * c_in, self.out), self.dtype)
        return jnp.dot(xz, w)


class FastInteraction(nn.Module):
    """One NequIP layer with the l ≤ 1 paths written out. Features: dict (l, p) → array."""

    hp: NequIPHParams
    outputs: tuple  # irreps this layer produces
    avg_num_neighbors: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, feats, onehot, unit, basis, senders, receivers):
        hp, c, dt = self.hp, self.hp.features, self.dtype
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dt, param_dtype=dt, name=name)  # noqa: E731
        inputs = [ir for ir in _irreps(hp.parity) if ir in feats]
        paths = _paths(inputs, self.outputs, hp.parity)
        outputs = [ir for ir in _irreps(hp.parity) if any(p[1] == ir for p in paths)]

        h = {ir: dense(c, f"linear_1_{ir[0]}{'eo'[ir[1] < 0]}")(feats[ir]) for ir in inputs}
        h_j = _unflatten(_flatten(h, inputs)[senders], inputs, c)  # one gather for all irreps
        w = RadialMLP(hp.radial_mlp_width, hp.radial_mlp_depth, len(paths) * c, dt)(basis)
        w = w.reshape(w.shape[0], len(paths), c)
        r = unit[:, :, None]  # (E, 3, 1)
        msg = {}
        for k, (ir_in, ir_out, op) in enumerate(paths):
            x, wk = h_j[ir_in], w[:, k]
            if op == "id":
                term = wk * x if ir_in[0] == 0 else wk[:, None] * x
            elif op == "vec":
                term = (wk * x)[:, None, :] * r
            elif op == "dot":
                term = wk * jnp.sum(x * r, axis=1)
            else:  # cross
                term = wk[:, None] * jnp.cross(x, r, axis=1)
            term = term * _OP_SCALE[op]
            msg[ir_out] = term if ir_out not in msg else msg[ir_out] + term
        n_in = {ir: sum(p[1] == ir for p in paths) for ir in outputs}
        msg = {ir: m / math.sqrt(n_in[ir]) for ir, m in msg.items()}
        agg = jax.ops.segment_sum(_flatten(msg, outputs), receivers, onehot.shape[0], indices_are_sorted=True)
        agg = _unflatten(agg / self.avg_num_neighbors, outputs, c)

        gated = [ir for ir in outputs if ir[0] == 1]
        out = {}
        for ir in outputs:
            name = f"{ir[0]}{'eo'[ir[1] < 0]}"
            n_out = c + c * len(gated) if ir == (0, 1) else c
            y = dense(n_out, f"linear_2_{name}")(agg[ir])
            if ir in feats:
                y = y + SpeciesLinear(n_out, dt, name=f"self_connection_{name}")(feats[ir], onehot)
            out[ir] = y
        act = ACTIVATIONS[hp.activation]
        scalars = out[(0, 1)]
        new = {(0, 1): act(scalars[:, :c])}
        if (0, -1) in out:
            new[(0, -1)] = jnp.tanh(out[(0, -1)])
        for k, ir in enumerate(gated):
            new[ir] = jax.nn.sigmoid(scalars[:, None, c * (k + 1) : c * (k + 2)]) * out[ir]
        return new


# ---------------------------------------------------------------- general implementation (e3nn-jax)


class E3nnInteraction(nn.Module):
    """One NequIP layer for any l_max through e3nn-jax. ``feats`` is an IrrepsArray (N, irreps)."""

    hp: NequIPHParams
    hidden: str  # irreps this layer may produce (after the gate); a string, as flax turns Irreps into tuples
    avg_num_neighbors: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, feats, species, unit, basis, senders, receivers, num_species):
        hp, hidden = self.hp, e3nn.Irreps(self.hidden)
        h = e3nn.flax.Linear(feats.irreps, name="linear_1")(feats)
        h_j = h[senders]
        parts = [h_j.filter(keep=hidden)]  # the Y0 = 1 path
        if hp.l_max > 0:
            sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(hp.l_max)[1:], e3nn.IrrepsArray("1o", unit), normalize=False, normalization="component")
            if not hp.parity:  # SE(3): harmonics relabelled even, so odd-l products are allowed
                sh = e3nn.IrrepsArray(e3nn.Irreps([(1, (l, 1)) for l in range(1, hp.l_max + 1)]), sh.array)
            parts.append(e3nn.tensor_product(h_j, sh, filter_ir_out=hidden))
        msg = e3nn.concatenate(parts).regroup()
        w = RadialMLP(hp.radial_mlp_width, hp.radial_mlp_depth, msg.irreps.num_irreps, self.dtype)(basis)
        msg = msg * w
        agg = e3nn.IrrepsArray(msg.irreps, jax.ops.segment_sum(msg.array, receivers, species.shape[0], indices_are_sorted=True))
        agg = agg / self.avg_num_neighbors

        scalars = hidden.filter(keep=["0e", "0o"])
        nonscalars = hidden.filter(drop=["0e", "0o"]).filter(keep=agg.irreps)
        gate_irreps = (scalars + e3nn.Irreps(f"{nonscalars.num_irreps}x0e") + nonscalars).simplify()
        # Both linears produce exactly gate_irreps (zeros where they have no input), in gate order.
        y = e3nn.flax.Linear(gate_irreps, force_irreps_out=True, name="linear_2")(agg)
        y = y + e3nn.flax.Linear(gate_irreps, num_indexed_weights=num_species, force_irreps_out=True, name="self_connection")(species, feats)
        act = ACTIVATIONS[hp.activation]
        return e3nn.gate(y, even_act=act, odd_act=jnp.tanh, even_gate_act=jax.nn.sigmoid, odd_gate_act=jnp.tanh, normalize_act=False)


# ---------------------------------------------------------------- the model


class NequIP(nn.Module):
    """Inner model: (vectors, species, senders, receivers, edge_mask, node_mask) → (N,) energies."""

    hp: NequIPHParams
    num_species: int
    cutoff: float
    avg_num_neighbors: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask):
        hp, c, dt = self.hp, self.hp.features, self.dtype
        vectors = vectors.astype(dt)
        unit, basis = _edge_geometry(vectors, edge_mask, self.cutoff, hp)
        onehot = jax.nn.one_hot(species, self.num_species, dtype=dt)
        embed = nn.Dense(c, use_bias=False, dtype=dt, param_dtype=dt, name="embedding")(onehot)
        if hp.l_max == 1 and hp.implementation == "auto":
            feats = {(0, 1): embed}
            for layer in range(hp.num_layers):
                last = layer == hp.num_layers - 1
                outputs = ((0, 1),) if last else tuple(_irreps(hp.parity))
                feats = FastInteraction(hp, outputs, self.avg_num_neighbors, dt, name=f"layer_{layer}")(
                    feats, onehot, unit, basis, senders, receivers
                )
            scalars = feats[(0, 1)]
        else:
            parities = [1, -1] if hp.parity else [1]
            hidden = e3nn.Irreps([(c, (l, p)) for l in range(hp.l_max + 1) for p in parities])
            feats = e3nn.IrrepsArray(f"{c}x0e", embed)
            for layer in range(hp.num_layers):
                target = e3nn.Irreps(f"{c}x0e") if layer == hp.num_layers - 1 else hidden
                feats = E3nnInteraction(hp, str(target), self.avg_num_neighbors, dt, name=f"layer_{layer}")(
                    feats, species, unit, basis, senders, receivers, self.num_species
                )
            scalars = feats.filter(keep="0e").array
        e = nn.Dense(1, use_bias=False, dtype=dt, param_dtype=dt, name="readout")(scalars)[:, 0]
        return jnp.where(node_mask, e, 0.0)


@register("nequip", NequIPHParams)
def build(hp: NequIPHParams, config) -> NequIP:
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    return NequIP(
        hp=hp, num_species=len(config.elements), cutoff=float(config.cutoff),
        avg_num_neighbors=float(config.avg_num_neighbors or 1.0), dtype=dtype,
    )
