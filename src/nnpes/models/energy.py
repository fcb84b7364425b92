"""E = Σ_i (σ_Z E_i + E0_Z) + b (+ a fixed pair repulsion) around any registered per-atom model."""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from nnpes.models.inputs import ModelInputs


class EnergyModel(nn.Module):
    """Wraps an inner model; returns (N,) per-atom energies in eV that sum to the structure energy.

    Parameters: ``scale`` (n_elements,) σ_Z, ``e0`` (n_elements,) E0_Z in eV, ``offset`` b in eV.
    The offset is shared out as b / N_atoms over the atoms of each structure, so per-atom energies
    still sum to E; it lives here once and the loss has no second copy.
    ``repulsion``: an untrained pair term (e.g. ``nnpes.models.repulsion.ZBLRepulsion``) called as
    ``repulsion(vectors, species, senders, receivers, edge_mask) -> (N,)`` eV, added unscaled.
    """

    inner: nn.Module
    e0_init: Sequence[float]
    scale_init: float = 1.0
    repulsion: Callable | None = None

    @nn.compact
    def __call__(self, inputs: ModelInputs):
        vectors, species, node_mask = inputs.vectors, inputs.species, inputs.node_mask
        n_el = len(self.e0_init)
        e0 = self.param("e0", lambda _: jnp.asarray(self.e0_init, vectors.dtype))
        scale = self.param("scale", lambda _: jnp.full((n_el,), self.scale_init, vectors.dtype))
        offset = self.param("offset", lambda _: jnp.zeros((), vectors.dtype))
        # Known edge pairs go to inner models that take them (NequIP's per-pair radial MLP).
        given = {} if inputs.pairs is None or not takes_pairs(self.inner) else {"pairs": inputs.pairs}
        e_i = self.inner(vectors, species, inputs.senders, inputs.receivers, inputs.edge_mask, node_mask, **given)
        atoms_in_graph = jnp.maximum(inputs.n_node[inputs.node_graph], 1).astype(vectors.dtype)
        e = scale[species] * e_i + e0[species] + offset / atoms_in_graph
        if self.repulsion is not None:
            e = e + self.repulsion(vectors, species, inputs.senders, inputs.receivers, inputs.edge_mask)
        return jnp.where(node_mask, e, 0.0)


def takes_pairs(module) -> bool:
    """Whether an inner model's ``__call__`` accepts ``pairs=`` (``ModelInputs.pairs``)."""
    return "pairs" in inspect.signature(type(module).__call__).parameters
