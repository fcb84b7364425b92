"""A private many-body test model ("_toy"), registered for the API tests and for developing the
physics battery (whose parametrisation skips names starting with "_"), and two deliberately broken
variants the battery must catch: "_rotating" (an extra term along x: not rotation invariant) and
"_detached" (an extra term behind stop_gradient: forces are not −∇E).

E_i = tanh(Σ_j w[s_i, s_j] u(r_ij) exp(-r_ij)) · a[s_i] + ½ Σ_j u(r_ij) / r_ij⁶: species-dependent,
many-body through the tanh, repulsive at short range (so optimisers find minima), smooth at the
cutoff through u(r) = (1 - (r/c)²)³.
"""

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from nnpes.models import MODELS, register


@dataclass
class ToyHParams:
    width: float = 1.0  # Å, decay length of the pair term


class ToyModel(nn.Module):
    n_elements: int
    cutoff: float
    width: float
    broken: str = ""  # "", "rotating" or "detached"

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask):
        dtype = vectors.dtype
        w = self.param("w", nn.initializers.normal(1.0, dtype), (self.n_elements, self.n_elements))
        a = self.param("a", nn.initializers.normal(1.0, dtype), (self.n_elements,))
        sq = jnp.sum(vectors * vectors, -1)
        r = jnp.sqrt(jnp.where(sq > 0, sq, 1.0))
        x2 = jnp.minimum(sq / self.cutoff**2, 1.0)
        real = edge_mask & (sq > 0)
        u = (1.0 - x2) ** 3
        pair = jnp.where(real, w[species[receivers], species[senders]] * u * jnp.exp(-r / self.width), 0.0)
        core = jnp.where(real, 0.5 * u / r**6, 0.0)
        s, rep = (jax.ops.segment_sum(x, receivers, species.shape[0], indices_are_sorted=True) for x in (pair, core))
        if self.broken == "rotating":  # x² term: an odd one would cancel over pairs
            rep = rep + jax.ops.segment_sum(jnp.where(real, 0.3 * u * (vectors[:, 0] / r) ** 2, 0.0), receivers, species.shape[0])
        if self.broken == "detached":  # in E, invisible to autodiff
            rep = rep + jax.lax.stop_gradient(jax.ops.segment_sum(jnp.where(real, u * jnp.exp(-r), 0.0), receivers, species.shape[0]))
        return jnp.where(node_mask, jnp.tanh(s) * a[species] + rep, 0.0)


if "_toy" not in MODELS:

    @register("_toy", ToyHParams)
    def _build(hp, cfg):
        return ToyModel(n_elements=len(cfg.elements), cutoff=cfg.cutoff, width=hp.width)


for _broken in ("rotating", "detached"):
    if f"_{_broken}" not in MODELS:
        register(f"_{_broken}", ToyHParams)(
            lambda hp, cfg, b=_broken: ToyModel(n_elements=len(cfg.elements), cutoff=cfg.cutoff, width=hp.width, broken=b))
