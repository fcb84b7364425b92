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
    features per layer (see benchmarks/README.md, Inference). Above ``block_above`` edges the
    per-edge work runs as a ``lax.scan`` over blocks of ``edge_chunk`` edges, rematerialised in
    the backward pass (``sum_messages``): faster on CPU for large systems and O(N + block)
    memory; there the radial MLP runs once per unordered pair
    (``radial_per_pair``, nequip_ops.py) and both messages of a pair come from it.
  * any l_max (or ``implementation: e3nn``): e3nn-jax spherical harmonics, ``tensor_product``,
    ``flax.Linear`` and ``gate``; blocked above ``block_above`` edges the same way.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from nnpes.config.schema import ConfigError, doc
from nnpes.models import register
from nnpes.models.aggregation import sum_messages, use_blocks
from nnpes.models.linear import species_mix
from nnpes.models.nequip_ops import edge_pairs
from nnpes.models.radial import ACTIVATIONS, edge_geometry, mlp


@dataclass
class NequIPHParams:
    """NequIP's defaults (our "standard size"); the radial MLP is 1 hidden layer of 128 (issue 3)."""

    num_layers: int = doc("interaction layers", default=4)
    features: int = doc("channels per irrep of the hidden features", default=32)
    l_max: int = doc("highest rotation order of features and spherical harmonics", default=1)
    parity: bool = doc("true: 0e+0o+1o+1e... features, E(3); false: 0e+1e..., SE(3)", default=True)
    num_bessel: int = doc("radial Bessel functions", default=8)
    radial_mlp_width: int = doc("hidden units of the radial MLP", default=128)
    radial_mlp_depth: int = doc("hidden layers of the radial MLP", default=1)
    polynomial_p: int = doc("exponent p of the polynomial cutoff envelope", default=6)
    activation: Literal["silu", "tanh"] = doc("on even scalars (odd scalars: tanh)", default="silu")
    implementation: Literal["auto", "e3nn"] = doc("auto: explicit l ≤ 1 kernels when l_max == 1; e3nn: e3nn-jax tensor products", default="auto")
    # Large systems (more than block_above edges): per-edge work in blocks of edge_chunk edges
    # (lax.scan, remat), radial MLP once per unordered pair (r_ij = r_ji). On 2 cores, blocked /
    # plain: train step 1.23 at 2 358 edges (8 aspirins), 1.05 at 4 430, 0.93 at 10 492, 0.73 at
    # 29 402; E+F 1.16 at 4 430, 0.58 at 10 492 (benchmarks/README.md, Inference): the threshold.
    edge_chunk: int | None = doc("large systems: edges per block of per-edge work; null: never block", default=1024)
    block_above: int = doc("work in edge blocks only above this many edges in a batch", default=8192)
    radial_per_pair: bool = doc("blocked path: radial MLP once per unordered pair (r_ij = r_ji)", default=True)
    # How the model is computed, not what: the same parameters give the same energies with any
    # values, so a fine-tune may set them anew (nnpes.potential.build.same_architecture).
    EXECUTION: ClassVar[tuple[str, ...]] = ("edge_chunk", "block_above", "radial_per_pair")

    def validate(self, path: str = "model"):
        for name in ("num_layers", "features", "num_bessel", "radial_mlp_width", "polynomial_p"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.edge_chunk is not None and self.edge_chunk < 2:
            raise ConfigError(f"{path}.edge_chunk must be ≥ 2 (edges per block) or null, got {self.edge_chunk}")
        if self.l_max < 0 or self.radial_mlp_depth < 0:
            raise ConfigError(f"{path}.l_max and {path}.radial_mlp_depth must be ≥ 0")
        if self.polynomial_p < 2:
            raise ConfigError(f"{path}.polynomial_p must be ≥ 2 for a smooth cutoff, got {self.polynomial_p}")


class RadialMLP(nn.Module):
    """Holds the radial MLP's kernels (params ``hidden_k/kernel``, ``out/kernel``) and returns them
    as a list, so the per-edge work can run as a pure function inside ``lax.scan``/``lax.cond``."""

    width: int
    depth: int
    out: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, n_basis: int) -> list:
        sizes = [n_basis] + [self.width] * self.depth + [self.out]
        names = [f"hidden_{k}" for k in range(self.depth)] + ["out"]
        init = nn.initializers.lecun_normal()
        return [
            self.param(name, lambda key, shape: {"kernel": init(key, shape, self.dtype)}, (a, b))["kernel"]
            for name, a, b in zip(names, sizes[:-1], sizes[1:])
        ]


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
    one-hot species): x (N, [3,] C_in), onehot (N, Z) → (N, [3,] C_out) (``linear.species_mix``)."""

    out: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, onehot):
        z, c_in = onehot.shape[-1], x.shape[-1]
        w = self.param("kernel", nn.initializers.normal(1.0 / math.sqrt(c_in)), (z * c_in, self.out), self.dtype)
        return species_mix(x, onehot, w)


def _messages(h_j, unit, w, *, paths, inputs, outputs, c):
    """Per-edge messages (E, Σ_out c(2l+1)) from sender features h_j (E, Σ_in c(2l+1)), unit
    vectors (E, 3) and radial weights w (E, paths·c); each output irrep normalised by its number
    of paths."""
    w = w.reshape(w.shape[0], len(paths), c)
    h_j = _unflatten(h_j, inputs, c)
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
    return _flatten({ir: m / math.sqrt(n_in[ir]) for ir, m in msg.items()}, outputs)


def _edge_messages(consts, unit, basis, senders, receivers, *, messages):
    """One directed edge per row: the message j → i."""
    h, kernels = consts
    return [(receivers, messages(h[senders], unit, mlp(kernels, basis)))]


def _pair_messages(consts, unit, basis, senders, receivers, *, messages):
    """One unordered pair per row (the edge i ← j with its reverse): both messages from one
    evaluation of the radial MLP; the reverse edge's unit vector is −r̂."""
    h, kernels = consts
    w = mlp(kernels, basis)
    return [(receivers, messages(h[senders], unit, w)), (senders, messages(h[receivers], -unit, w))]


class FastInteraction(nn.Module):
    """One NequIP layer with the l ≤ 1 paths written out. Features: dict (l, p) → array."""

    hp: NequIPHParams
    outputs: tuple  # irreps this layer produces
    avg_num_neighbors: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, feats, onehot, unit, basis, senders, receivers, pairs=None, edge_mask=None):
        """``pairs`` (nequip_ops.EdgePairs) is used on the blocked path only; there blocks of
        padding (``edge_mask`` False) are skipped."""
        hp, c, dt = self.hp, self.hp.features, self.dtype
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=dt, param_dtype=dt, name=name)  # noqa: E731
        inputs = [ir for ir in _irreps(hp.parity) if ir in feats]
        paths = _paths(inputs, self.outputs, hp.parity)
        outputs = [ir for ir in _irreps(hp.parity) if any(p[1] == ir for p in paths)]

        h = {ir: dense(c, f"linear_1_{ir[0]}{'eo'[ir[1] < 0]}")(feats[ir]) for ir in inputs}
        kernels = RadialMLP(hp.radial_mlp_width, hp.radial_mlp_depth, len(paths) * c, dt, name="RadialMLP_0")(basis.shape[1])
        messages = functools.partial(_messages, paths=tuple(paths), inputs=tuple(inputs), outputs=tuple(outputs), c=c)
        consts, n_node = (_flatten(h, inputs), kernels), onehot.shape[0]
        per_edge = functools.partial(_edge_messages, messages=messages)
        blocked = _blocked(hp, unit.shape[0])
        chunk = hp.edge_chunk if blocked else None
        edge_sum = lambda: sum_messages(  # noqa: E731
            per_edge, chunk, consts, n_node, unit, basis, senders, receivers, indices_are_sorted=True, active=edge_mask
        )
        if pairs is None or not blocked:
            agg = edge_sum()
        else:  # one radial MLP row per pair; per-edge fallback if the pairing fails (nequip_ops)
            per_pair = functools.partial(_pair_messages, messages=messages)
            f = pairs.first
            pair_sum = lambda: sum_messages(  # noqa: E731
                per_pair, max(1, chunk // 2), consts, n_node, unit[f], basis[f], senders[f], receivers[f],
                active=None if edge_mask is None else edge_mask[f],
            )
            agg = jax.lax.cond(pairs.valid, pair_sum, edge_sum)
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


def _e3nn_messages(h_j: e3nn.IrrepsArray, unit, hidden: e3nn.Irreps, hp: NequIPHParams) -> e3nn.IrrepsArray:
    """Per-edge h_j ⊗ Y(r̂) (E, msg irreps), the Y0 = 1 path included, regrouped; unweighted."""
    parts = [h_j.filter(keep=hidden)]  # the Y0 = 1 path
    if hp.l_max > 0:
        sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(hp.l_max)[1:], e3nn.IrrepsArray("1o", unit), normalize=False, normalization="component")
        if not hp.parity:  # SE(3): harmonics relabelled even, so odd-l products are allowed
            sh = e3nn.IrrepsArray(e3nn.Irreps([(1, (l, 1)) for l in range(1, hp.l_max + 1)]), sh.array)
        # MACE's written-out product (mace_ops.edge_messages) was measured slower here, at 32
        # channels of six irreps: training step 1.37x, aspirin E+F 1.8x (one core, 2026-12-06).
        parts.append(e3nn.tensor_product(h_j, sh, filter_ir_out=hidden))
    return e3nn.concatenate(parts).regroup()


def _e3nn_edge_messages(consts, unit, basis, senders, receivers, *, irreps: str, hidden: str, hp: NequIPHParams):
    """sum_messages' per-edge function: [(receivers, messages (E, D))], messages weighted per
    irrep by the radial MLP."""
    h, kernels = consts
    msg = _e3nn_messages(e3nn.IrrepsArray(irreps, h[senders]), unit, e3nn.Irreps(hidden), hp)
    return [(receivers, (msg * mlp(kernels, basis)).array)]


class E3nnInteraction(nn.Module):
    """One NequIP layer for any l_max through e3nn-jax. ``feats`` is an IrrepsArray (N, irreps)."""

    hp: NequIPHParams
    hidden: str  # irreps this layer may produce (after the gate); a string, as flax turns Irreps into tuples
    avg_num_neighbors: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, feats, species, unit, basis, senders, receivers, num_species, edge_mask=None):
        """Above ``block_above`` edges the messages are made and summed in blocks of
        ``edge_chunk`` edges (``sum_messages``; blocks of padding skipped), as on the l ≤ 1 path."""
        hp, hidden = self.hp, e3nn.Irreps(self.hidden)
        h = e3nn.flax.Linear(feats.irreps, name="linear_1")(feats)
        msg_irreps = _e3nn_messages(h[:1], unit[:1], hidden, hp).irreps  # for the irreps only (dead code)
        kernels = RadialMLP(hp.radial_mlp_width, hp.radial_mlp_depth, msg_irreps.num_irreps, self.dtype, name="RadialMLP_0")(basis.shape[1])
        per_edge = functools.partial(_e3nn_edge_messages, irreps=str(h.irreps), hidden=str(hidden), hp=hp)
        chunk = hp.edge_chunk if _blocked(hp, unit.shape[0]) else None
        agg = sum_messages(per_edge, chunk, (h.array, kernels), species.shape[0], unit, basis, senders, receivers,
                           indices_are_sorted=True, active=edge_mask)
        agg = e3nn.IrrepsArray(msg_irreps, agg / self.avg_num_neighbors)

        scalars = hidden.filter(keep=["0e", "0o"])
        nonscalars = hidden.filter(drop=["0e", "0o"]).filter(keep=agg.irreps)
        gate_irreps = (scalars + e3nn.Irreps(f"{nonscalars.num_irreps}x0e") + nonscalars).simplify()
        # Both linears produce exactly gate_irreps (zeros where they have no input), in gate order.
        y = e3nn.flax.Linear(gate_irreps, force_irreps_out=True, name="linear_2")(agg)
        y = y + e3nn.flax.Linear(gate_irreps, num_indexed_weights=num_species, force_irreps_out=True, name="self_connection")(species, feats)
        act = ACTIVATIONS[hp.activation]
        return e3nn.gate(y, even_act=act, odd_act=jnp.tanh, even_gate_act=jax.nn.sigmoid, odd_gate_act=jnp.tanh, normalize_act=False)


def _blocked(hp: NequIPHParams, n_edges) -> bool:
    """Whether the per-edge work runs in blocks (aggregation.use_blocks)."""
    return use_blocks(n_edges, hp.edge_chunk, hp.block_above)


# ---------------------------------------------------------------- the model


class NequIP(nn.Module):
    """Inner model: (vectors, species, senders, receivers, edge_mask, node_mask) → (N,) energies."""

    hp: NequIPHParams
    num_species: int
    cutoff: float
    avg_num_neighbors: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask, pairs=None):
        """``pairs``: the edges' pairing when the caller knows it (``ModelInputs.pairs``), else
        ``edge_pairs`` sorts for it on the blocked path."""
        hp, c, dt = self.hp, self.hp.features, self.dtype
        vectors = vectors.astype(dt)
        unit, basis = edge_geometry(vectors, edge_mask, self.cutoff, hp.num_bessel, hp.polynomial_p)
        onehot = jax.nn.one_hot(species, self.num_species, dtype=dt)
        embed = nn.Dense(c, use_bias=False, dtype=dt, param_dtype=dt, name="embedding")(onehot)
        if hp.l_max == 1 and hp.implementation == "auto":
            blocked = _blocked(hp, vectors.shape[0])
            if not (hp.radial_per_pair and blocked):
                pairs = None
            elif pairs is None:
                pairs = edge_pairs(vectors, senders, receivers, edge_mask)
            feats = {(0, 1): embed}
            for layer in range(hp.num_layers):
                last = layer == hp.num_layers - 1
                outputs = ((0, 1),) if last else tuple(_irreps(hp.parity))
                feats = FastInteraction(hp, outputs, self.avg_num_neighbors, dt, name=f"layer_{layer}")(
                    feats, onehot, unit, basis, senders, receivers, pairs, edge_mask
                )
            scalars = feats[(0, 1)]
        else:
            parities = [1, -1] if hp.parity else [1]
            hidden = e3nn.Irreps([(c, (l, p)) for l in range(hp.l_max + 1) for p in parities])
            feats = e3nn.IrrepsArray(f"{c}x0e", embed)
            for layer in range(hp.num_layers):
                target = e3nn.Irreps(f"{c}x0e") if layer == hp.num_layers - 1 else hidden
                feats = E3nnInteraction(hp, str(target), self.avg_num_neighbors, dt, name=f"layer_{layer}")(
                    feats, species, unit, basis, senders, receivers, self.num_species, edge_mask
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
