"""MACE (Batatia et al., NeurIPS 2022): higher-order equivariant message passing, per-atom energies.

Node features h (C channels of each hidden irrep, natural parity 0e + 1o + 2e + ...); one layer:

    A_i = Linear( 1/avg_num_neighbors Σ_j R(r_ij) ⊙ [Linear(h_j) ⊗ Y(r̂_ij)] )   one-particle basis,
          C channels of each of Y's irreps 0e + 1o + ... + max_ell; on the first layer followed by
          a per-element linear Linear_{Z_i} (mace-torch's first-layer skip_tp)
    R(r) = MLP_silu(Bessel(r) · u(r))      u: polynomial envelope, no biases: R vanishes at r_cut
    B_i = SymmetricContraction_ν≤correlation(A_i; W_{Z_i})                   product basis (mace_ops)
    h_i ← Linear(B_i) + SelfConnection(h_i, Z_i)                            (no residual on layer 1)

Species enter as a one-hot embedding (linear → C scalars), through the first layer's per-element
mix of A, the per-element contraction weights and the per-element self-connection. Readouts: a linear of the scalars after every layer
but the last, a small MLP (``mlp_irreps``) after the last; their sum is E_i. The last layer
computes only the scalars the readout needs. Full E(3) symmetry (rotations and reflections).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from nnpes.config.schema import ConfigError, doc
from nnpes.models import register
from nnpes.models.aggregation import sum_messages, use_blocks
from nnpes.models.linear import ElementLinear
from nnpes.models.mace_ops import coupling, edge_messages, edge_product, symmetric_contraction, to_e3nn_layout
from nnpes.models.radial import ACTIVATIONS, edge_geometry, mlp

# Above BLOCK_ABOVE edges the per-edge messages are made and summed EDGE_CHUNK edges at a time
# (aggregation.sum_messages): benchmarks/README.md, MACE.
EDGE_CHUNK, BLOCK_ABOVE = 128, 8192


@dataclass
class MACEHParams:
    """MACE's standard model (2 layers, 128x0e+128x1o, max_ell 3, correlation 3); r_max is ``cutoff``."""

    num_interactions: int = doc("message-passing layers", default=2)
    num_channels: int = doc("channels per irrep of the hidden features", default=128)
    max_L: int = doc("highest l of the hidden features (irreps 0e+1o+2e+...)", default=1)
    hidden_irreps: str | None = doc('e.g. "128x0e+128x1o"; overrides num_channels and max_L', default=None)
    max_ell: int = doc("highest l of the edge spherical harmonics (and of A)", default=3)
    correlation: int = doc("correlation order ν of the product basis (messages of body order ν + 1)", default=3)
    num_bessel: int = doc("radial Bessel functions", default=8)
    num_polynomial_cutoff: int = doc("envelope exponent p (C² cut at r_max)", default=5)
    radial_mlp: list[int] = doc("hidden widths of the radial MLP", default_factory=lambda: [64, 64, 64])
    mlp_irreps: str = doc("hidden irreps of the last readout's MLP (scalars, e.g. 16x0e)", default="16x0e")
    gate: Literal["silu", "tanh"] = doc("activation of the radial and readout MLPs", default="silu")

    def validate(self, path: str = "model"):
        for name in ("num_interactions", "num_channels", "correlation", "num_bessel"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{path}.{name} must be ≥ 1, got {getattr(self, name)}")
        if self.max_L < 0 or self.max_ell < 0 or any(w < 1 for w in self.radial_mlp):
            raise ConfigError(f"{path}.max_L, max_ell must be ≥ 0 and radial_mlp widths ≥ 1")
        if self.num_polynomial_cutoff < 2:
            raise ConfigError(f"{path}.num_polynomial_cutoff must be ≥ 2 for a smooth cutoff, got {self.num_polynomial_cutoff}")
        hidden = self._irreps(self.hidden_irreps, path + ".hidden_irreps") if self.hidden_irreps else None
        if hidden is not None and (len({mul for mul, _ in hidden}) != 1 or "0e" not in hidden
                                   or any(ir.p != (-1) ** ir.l for _, ir in hidden)):
            raise ConfigError(f"{path}.hidden_irreps: need one multiplicity, 0e and natural parity "
                              f"(0e+1o+2e+...), got {self.hidden_irreps!r}")
        mlp = self._irreps(self.mlp_irreps, path + ".mlp_irreps")
        if not mlp.is_scalar() or mlp.num_irreps < 1 or "0o" in mlp:
            raise ConfigError(f"{path}.mlp_irreps: need even scalars such as 16x0e, got {self.mlp_irreps!r}")

    @staticmethod
    def _irreps(text: str, path: str) -> e3nn.Irreps:
        try:
            return e3nn.Irreps(text)
        except (ValueError, AssertionError) as e:
            raise ConfigError(f"{path}: not an irreps string ({e})") from None

    @property
    def hidden(self) -> e3nn.Irreps:
        """Hidden irreps, e.g. 128x0e+128x1o."""
        if self.hidden_irreps:
            return e3nn.Irreps(self.hidden_irreps).regroup()
        return e3nn.Irreps([(self.num_channels, (l, (-1) ** l)) for l in range(self.max_L + 1)])

    @property
    def channels(self) -> int:
        return self.hidden[0].mul


class Kernel(nn.Module):
    """One bias-free dense layer's weights with nn.Dense's parameter name and initialiser."""

    shape: tuple
    dtype: jnp.dtype

    @nn.compact
    def __call__(self):
        return self.param("kernel", nn.initializers.lecun_normal(), self.shape, self.dtype)


class MLPKernels(nn.Module):
    """Weights (params ``dense_k/kernel``) of a bias-free MLP with layer sizes ``sizes`` (input
    first), as a list for the pure ``radial.mlp``, so the MLP can also run inside ``lax.scan``."""

    sizes: tuple
    dtype: jnp.dtype

    @nn.compact
    def __call__(self) -> list:
        pairs = zip(self.sizes[:-1], self.sizes[1:])
        return [Kernel((a, b), self.dtype, name=f"dense_{k}")() for k, (a, b) in enumerate(pairs)]


def _edge_messages(consts, sh, basis, senders, receivers, *, product, gate):
    """Messages j → i of a block of edges: (receivers (B,), (B, rows·C)) (mace_ops.edge_messages)."""
    h, kernels = consts  # h (N, d_h, C)
    w = mlp(kernels, basis, gate)
    m = edge_messages(h[senders], sh, w.reshape(w.shape[0], len(product.paths), h.shape[-1]), product)
    return [(receivers, m.reshape(m.shape[0], -1))]


class Interaction(nn.Module):
    """One MACE layer: one-particle basis A, symmetric contraction B, update. h: IrrepsArray (N, ·)."""

    hp: MACEHParams
    target: str  # irreps this layer produces (a string: flax turns Irreps into tuples)
    residual: bool
    num_species: int
    avg_num_neighbors: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, h, species, sh, basis, senders, receivers, edge_mask=None):
        hp, c, n_node = self.hp, self.hp.channels, species.shape[0]
        up = e3nn.flax.Linear(h.irreps, name="linear_up")(h)
        product = edge_product(str(self._single(up.irreps)), str(sh.irreps))
        sizes = (basis.shape[1], *hp.radial_mlp, len(product.paths) * c)
        consts = (jnp.swapaxes(up.mul_to_axis(c).array, 1, 2), MLPKernels(sizes, self.dtype, name="radial_mlp")())
        per_edge = functools.partial(_edge_messages, product=product, gate=ACTIVATIONS[hp.gate])
        chunk = EDGE_CHUNK if use_blocks(sh.shape[0], EDGE_CHUNK, BLOCK_ABOVE) else None
        a = sum_messages(per_edge, chunk, consts, n_node, sh.array, basis, senders, receivers, indices_are_sorted=True,
                         active=edge_mask)  # blocks of padding skipped
        a = to_e3nn_layout(a.reshape(n_node, -1, c), product) / self.avg_num_neighbors
        msg_irreps = e3nn.Irreps([(mul * c, ir) for mul, ir in e3nn.Irreps(product.irreps_out)])
        a = e3nn.IrrepsArray(msg_irreps, a)
        a = e3nn.flax.Linear(c * sh.irreps, force_irreps_out=True, name="linear_a")(a)
        if not self.residual:  # the first layer mixes A's channels per element (MACE's skip_tp there)
            a = ElementLinear(str(a.irreps), self.num_species, name="species_mix")(species, a)
        b = self._product_basis(a.mul_to_axis(c).array, species)  # (N, C, D)
        target = e3nn.Irreps(self.target)
        b = e3nn.IrrepsArray(self._single(target), b).axis_to_mul()
        out = e3nn.flax.Linear(target, force_irreps_out=True, name="linear_b")(b)
        if self.residual:
            out = out + ElementLinear(str(target), self.num_species, name="self_connection")(species, h)
        return out

    @staticmethod
    def _single(irreps: e3nn.Irreps) -> e3nn.Irreps:
        return e3nn.Irreps([(1, ir) for _, ir in irreps])

    def _product_basis(self, a, species):
        """(N, C, d) A → (N, C, D) B with per-element weights W^ν (Z, Q_ν, C)."""
        hp = self.hp
        a_irreps = str(e3nn.Irreps.spherical_harmonics(hp.max_ell))
        couplings = [coupling(a_irreps, str(self._single(e3nn.Irreps(self.target))), nu)
                     for nu in range(1, hp.correlation + 1)]
        weights = []
        for nu, cp in enumerate(couplings, start=1):
            n_paths = cp.coefficients.shape[1]
            init = nn.initializers.normal(1.0 / max(n_paths, 1) ** 0.5)
            w = self.param(f"weights_{nu}", init, (self.num_species, n_paths, hp.channels), self.dtype)
            weights.append(w[species])  # gathered once per node
        return symmetric_contraction(a, weights, couplings)


class MACE(nn.Module):
    """Inner model: (vectors, species, senders, receivers, edge_mask, node_mask) → (N,) energies."""

    hp: MACEHParams
    num_species: int
    cutoff: float
    avg_num_neighbors: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask):
        hp, dt = self.hp, self.dtype
        vectors = vectors.astype(dt)
        unit, basis = edge_geometry(vectors, edge_mask, self.cutoff, hp.num_bessel, hp.num_polynomial_cutoff)
        sh_irreps = e3nn.Irreps.spherical_harmonics(hp.max_ell)  # 0e + 1o + ... + max_ell
        sh = e3nn.spherical_harmonics(sh_irreps, e3nn.IrrepsArray("1o", unit), normalize=False, normalization="component")
        onehot = jax.nn.one_hot(species, self.num_species, dtype=dt)
        embed = nn.Dense(hp.channels, use_bias=False, dtype=dt, param_dtype=dt, name="embedding")(onehot)
        h = e3nn.IrrepsArray(f"{hp.channels}x0e", embed)
        energy = jnp.zeros(species.shape, dt)
        for layer in range(hp.num_interactions):
            last = layer == hp.num_interactions - 1
            target = e3nn.Irreps(f"{hp.channels}x0e") if last else hp.hidden
            h = Interaction(hp, str(target), layer > 0, self.num_species, self.avg_num_neighbors, dt, name=f"layer_{layer}")(
                h, species, sh, basis, senders, receivers, edge_mask
            )
            scalars = h.filter(keep="0e").array
            widths = (e3nn.Irreps(hp.mlp_irreps).num_irreps, 1) if last else (1,)
            readout = MLPKernels((scalars.shape[-1], *widths), dt, name=f"readout_{layer}")()
            energy = energy + mlp(readout, scalars, ACTIVATIONS[hp.gate])[:, 0]
        return jnp.where(node_mask, energy, 0.0)


@register("mace", MACEHParams)
def build(hp: MACEHParams, config) -> MACE:
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    return MACE(hp, len(config.elements), float(config.cutoff), float(config.avg_num_neighbors or 1.0), dtype)
