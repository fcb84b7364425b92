"""Behler–Parrinello high-dimensional neural-network potential (Behler & Parrinello, PRL 98, 146401
(2007); ACSF: Behler, JCP 134, 074106 (2011)).

E_i = NN_{Z_i}((G_i − μ_{Z_i}) / s_{Z_i}): atom-centred symmetry functions G_i (radial G2 and angular
G5, element-resolved; ``nnpes.models.symmetry_functions``) normalised per element by training-set
mean μ and standard deviation s, then one MLP per element, shared by all atoms of that element.
μ and s are not trained: they live in the flax collection "constants" (initialised 0 / 1) and are
set by ``calibrate_bp``, which ``build_potential(..., dataset=...)`` runs on the training graphs.

Hyperparameters (``model:`` section keys, all optional; shown with their defaults):

    hidden: [32, 32]          hidden widths of each element's MLP
    activation: tanh          tanh (Behler's choice) or silu
    n_radial: 8               G2 shifts R_s per neighbour element, evenly spaced over
    radial_r_min: 0.5         [radial_r_min, cutoff) Å with spacing Δ = (cutoff − r_min) / n_radial
    radial_eta: null          G2 width η in Å⁻²; null → 1 / (2Δ²) (neighbouring Gaussians overlap at 1σ)
    angular_etas: [0.01, 0.1] G5 radial decay η in Å⁻²
    zetas: [1, 2, 4]          G5 angular resolution ζ (positive integers)
    lambdas: [-1, 1]          G5 λ

With 3 elements (ethanol) that is 3·8 = 24 radial + 6 pairs·2·3·2 = 72 angular = 96 descriptors per atom.

Per-element MLPs: every atom runs through all n_el MLPs as one batched GEMM per layer and keeps its
own element's output. For the few elements of a molecular data set this is faster than gathering a
(D × H) weight matrix per atom, which moves N·D·H numbers through memory for N·D·H multiply-adds
(see benchmarks/README.md, "Behler–Parrinello").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from nnpes import keys
from nnpes.models.inputs import model_inputs, species_table
from nnpes.models import register
from nnpes.models.symmetry_functions import ACSFSpec, acsf
from nnpes.config.schema import ConfigError, doc


@dataclass
class BPHParams:
    hidden: list[int] = doc("hidden widths of each element's MLP", default_factory=lambda: [32, 32])
    activation: Literal["tanh", "silu"] = doc("MLP activation", default="tanh")
    n_radial: int = doc("G2 Gaussians per neighbour element", default=8)
    radial_r_min: float = doc("first G2 centre R_s, Å (centres spaced evenly up to cutoff)", default=0.5)
    radial_eta: float | None = doc("G2 width η, Å⁻² (null: 1/(2Δ²) from the centre spacing Δ)", default=None)
    angular_etas: list[float] = doc("G5 radial decay η, Å⁻²", default_factory=lambda: [0.01, 0.1])
    zetas: list[int] = doc("G5 angular exponents ζ (positive integers)", default_factory=lambda: [1, 2, 4])
    lambdas: list[float] = doc("G5 λ, each -1 or 1", default_factory=lambda: [-1.0, 1.0])

    def validate(self, path: str = "model"):
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"{path}.hidden: give at least one positive layer width, got {self.hidden}")
        if self.n_radial < 1:
            raise ConfigError(f"{path}.n_radial must be >= 1, got {self.n_radial}")
        if self.radial_r_min < 0:
            raise ConfigError(f"{path}.radial_r_min must be >= 0 Å, got {self.radial_r_min}")
        if self.radial_eta is not None and not self.radial_eta > 0:
            raise ConfigError(f"{path}.radial_eta must be > 0 Å⁻², got {self.radial_eta}")
        if not self.angular_etas or any(not e >= 0 for e in self.angular_etas):
            raise ConfigError(f"{path}.angular_etas must be >= 0 Å⁻², got {self.angular_etas}")
        if not self.zetas or any(z < 1 for z in self.zetas):
            raise ConfigError(f"{path}.zetas: positive integers (G5 is exact only for integer ζ), got {self.zetas}")
        if not self.lambdas or any(lam not in (-1, 1) for lam in self.lambdas):
            raise ConfigError(f"{path}.lambdas: each must be -1 or 1, got {self.lambdas}")


def make_acsf_spec(hp: BPHParams, n_species: int, cutoff: float) -> ACSFSpec:
    if hp.radial_r_min >= cutoff:
        raise ConfigError(f"model.radial_r_min ({hp.radial_r_min} Å) must be below model.cutoff ({cutoff} Å)")
    delta = (cutoff - hp.radial_r_min) / hp.n_radial
    shifts = tuple(float(hp.radial_r_min + k * delta) for k in range(hp.n_radial))
    eta = hp.radial_eta if hp.radial_eta is not None else 1.0 / (2.0 * delta**2)
    return ACSFSpec(
        n_species=n_species, cutoff=float(cutoff), radial_shifts=shifts, radial_eta=float(eta),
        angular_etas=tuple(float(e) for e in hp.angular_etas), zetas=tuple(int(z) for z in hp.zetas),
        lambdas=tuple(float(lam) for lam in hp.lambdas),
    )


class BehlerParrinello(nn.Module):
    """Inner model: ``(vectors, species, senders, receivers, edge_mask, node_mask) -> (N,)`` eV,
    unscaled (EnergyModel applies σ_Z, E0_Z and the offset)."""

    spec: ACSFSpec
    numbers: tuple[int, ...]  # atomic numbers of the elements, in species-index order
    hidden: tuple[int, ...] = (32, 32)
    activation: str = "tanh"
    dtype: str = "float32"

    def descriptors(self, vectors, species, senders, receivers, edge_mask):
        """(N, D) raw (unnormalised) symmetry functions."""
        return acsf(self.spec, vectors, species, senders, receivers, edge_mask)

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask):
        dtype = jnp.dtype(self.dtype)
        n_el, size = self.spec.n_species, self.spec.size
        g = self.descriptors(vectors.astype(dtype), species, senders, receivers, edge_mask)
        mean = self.variable("constants", "mean", lambda: jnp.zeros((n_el, size), dtype)).value
        std = self.variable("constants", "std", lambda: jnp.ones((n_el, size), dtype)).value
        x = (g - mean[species]) / std[species]
        self.sow("intermediates", "normalised_descriptors", x)  # free unless the caller asks for it

        act = jnp.tanh if self.activation == "tanh" else jax.nn.silu
        # Stacked per-element weights (n_el, in, out); all atoms through all element MLPs.
        init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        widths = list(self.hidden) + [1]
        h, fan_in = x, size
        for layer, width in enumerate(widths):
            w = self.param(f"w{layer}", init, (n_el, fan_in, width), dtype)
            b = self.param(f"b{layer}", nn.initializers.zeros, (n_el, width), dtype)
            # First layer: one GEMM (N, D) x (D, n_el·H); later layers batched over elements.
            h = jnp.einsum("nd,edh->neh" if layer == 0 else "ned,edh->neh", h, w) + b
            if layer < len(widths) - 1:
                h = act(h)
            fan_in = width
        e = jnp.take_along_axis(h[..., 0], species[:, None], axis=1)[:, 0]
        return jnp.where(node_mask, e, 0.0)


def _graph_descriptors(inner: BehlerParrinello, table, graph: jraph.GraphsTuple):
    """(N, D) raw descriptors and (N,) species of one padded graph."""
    dtype = jnp.dtype(inner.dtype)
    graph = graph._replace(nodes={**graph.nodes, keys.POSITIONS: jnp.asarray(graph.nodes[keys.POSITIONS], dtype)},
                           globals={**graph.globals, keys.CELL: jnp.asarray(graph.globals[keys.CELL], dtype)})
    x = model_inputs(graph, table)
    return inner.descriptors(x.vectors, x.species, x.senders, x.receivers, x.edge_mask), x.species


def calibrate_bp(module, variables, padded_graphs):
    """Per-element mean and standard deviation of the raw descriptors over the real atoms of
    ``padded_graphs`` (padded numpy GraphsTuples); returns ``variables`` with
    ``constants/inner/{mean, std}`` replaced. Elements absent from the data keep 0 / 1; a descriptor
    that is constant for an element gets std 1 (it then normalises to 0)."""
    inner = module.inner
    n_el, size = inner.spec.n_species, inner.spec.size
    table = species_table(inner.numbers)
    fn = jax.jit(lambda g: _graph_descriptors(inner, jnp.asarray(table), g))
    count = np.zeros(n_el)
    mean = np.zeros((n_el, size))
    m2 = np.zeros((n_el, size))  # sum of squared deviations (Chan et al. pairwise merge)
    for k, graph in enumerate(padded_graphs):
        numbers = np.asarray(graph.nodes[keys.NUMBERS])
        node_mask = np.asarray(jraph.get_node_padding_mask(graph))
        unknown = sorted(set(numbers[node_mask].tolist()) - set(inner.numbers))
        if unknown:
            raise ValueError(f"calibrate_bp: graph {k} has atomic numbers {unknown} not in the model's elements {list(inner.numbers)}")
        g, species = fn(graph)
        g, species = np.asarray(g, np.float64), np.asarray(species)
        for s in range(n_el):
            rows = g[node_mask & (species == s)]
            if len(rows) == 0:
                continue
            nb, mb = len(rows), rows.mean(axis=0)
            m2b = ((rows - mb) ** 2).sum(axis=0)
            na = count[s]
            delta = mb - mean[s]
            tot = na + nb
            mean[s] = mean[s] + delta * nb / tot
            m2[s] = m2[s] + m2b + delta**2 * na * nb / tot
            count[s] = tot
    std = np.sqrt(m2 / np.maximum(count, 1)[:, None])
    std = np.where(std > 1e-6 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    std[count == 0] = 1.0
    dtype = jnp.dtype(inner.dtype)
    constants = dict(variables.get("constants", {}))
    constants["inner"] = {"mean": jnp.asarray(mean, dtype), "std": jnp.asarray(std, dtype)}
    return {**variables, "constants": constants}


@register("behler_parrinello", BPHParams, calibrate=calibrate_bp)
def build(hp: BPHParams, cfg) -> BehlerParrinello:
    spec = make_acsf_spec(hp, len(cfg.elements), cfg.cutoff)
    return BehlerParrinello(
        spec=spec, numbers=tuple(cfg.numbers), hidden=tuple(hp.hidden), activation=hp.activation, dtype=cfg.dtype,
    )
