"""A private many-body test model ("_toy"), registered for the API tests and for developing the
physics battery (whose parametrisation skips names starting with "_").

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
        return jnp.where(node_mask, jnp.tanh(s) * a[species] + rep, 0.0)


if "_toy" not in MODELS:

    @register("_toy", ToyHParams)
    def _build(hp, cfg):
        return ToyModel(n_elements=len(cfg.elements), cutoff=cfg.cutoff, width=hp.width)
