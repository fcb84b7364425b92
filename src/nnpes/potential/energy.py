"""Energies, forces and stress of a padded graph: the pure function every front end jits.

Forces are −∂E/∂R by ``jax.grad``; stress is (1/V) ∂E/∂ε for a symmetric strain ε applied to the
cell and the positions (ase sign convention, eV/Å³).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph

from nnpes import keys
from nnpes.graph.build import node_graph_index
from nnpes.models.inputs import model_inputs


def per_atom_energies(module, table, params, graph: jraph.GraphsTuple, positions, cell):
    """(N,) eV. ``positions`` (N,3) and ``cell`` (G,3,3) are explicit for differentiation."""
    return module.apply(params, model_inputs(graph, table, positions, cell))


def energy_forces_stress(module, table, params, graph: jraph.GraphsTuple, compute_stress: bool = True) -> dict:
    """``energy`` (G,) eV, ``forces`` (N,3) eV/Å, ``stress`` (G,3,3) eV/Å³ (zero where not
    periodic; only with ``compute_stress``), per-atom ``energies`` (N,) eV. Padding gives zeros."""
    positions = graph.nodes[keys.POSITIONS]
    cell = graph.globals[keys.CELL]
    n_graph = graph.n_node.shape[0]
    node_graph = node_graph_index(graph)

    def total(positions, strain):
        sym = 0.5 * (strain + jnp.swapaxes(strain, 1, 2))
        pos = positions + jnp.einsum("ni,nij->nj", positions, sym[node_graph])
        c = cell + jnp.einsum("gij,gjk->gik", cell, sym)
        e_i = per_atom_energies(module, table, params, graph, pos, c)
        e_g = jax.ops.segment_sum(e_i, node_graph, n_graph)
        return jnp.sum(e_g), (e_g, e_i)

    strain = jnp.zeros((n_graph, 3, 3), positions.dtype)
    argnums = (0, 1) if compute_stress else 0
    grads, (e_g, e_i) = jax.grad(total, argnums=argnums, has_aux=True)(positions, strain)
    out = {keys.ENERGY: e_g, keys.ENERGIES: e_i}
    if compute_stress:
        d_pos, d_strain = grads
        volume = jnp.abs(jnp.linalg.det(cell))
        periodic = jnp.all(graph.globals[keys.PBC], axis=-1) if keys.PBC in graph.globals else jnp.ones(n_graph, bool)
        stress = d_strain / jnp.where(periodic, volume, 1.0)[:, None, None]
        out[keys.STRESS] = jnp.where(periodic[:, None, None], stress, 0.0)
    else:
        d_pos = grads
    out[keys.FORCES] = -d_pos
    return out
