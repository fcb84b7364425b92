"""The Potential: the one object users hold (config + flax module + parameters).

Forces are −∂E/∂R by ``jax.grad``; stress is (1/V) ∂E/∂ε for a symmetric strain ε applied to the
cell and the positions (ase sign convention, eV/Å³).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from nnpes import keys
from nnpes.graph import edge_vectors, node_graph_index
from nnpes.models import get_model
from nnpes.models.config import ModelConfig, parse_model_config
from nnpes.models.energy import EnergyModel


def species_table(config: ModelConfig) -> np.ndarray:
    """(119,) int32: atomic number → index in config.elements, −1 if unknown (0 → 0 for padding)."""
    table = np.full(119, -1, np.int32)
    for k, z in enumerate(config.numbers):
        table[z] = k
    table[0] = 0
    return table


def make_module(config: ModelConfig) -> EnergyModel:
    spec = get_model(config.name)
    inner = spec.build(config.hparams, config)
    e0 = [float((config.e0 or {}).get(s, 0.0)) for s in config.elements]
    return EnergyModel(inner=inner, e0_init=tuple(e0), scale_init=float(config.scale or 1.0))


def per_atom_energies(module: EnergyModel, table, params, graph: jraph.GraphsTuple, positions, cell):
    """(N,) eV. ``positions`` (N,3) and ``cell`` (G,3,3) are explicit for differentiation."""
    species = jnp.asarray(table)[graph.nodes[keys.NUMBERS]]
    node_mask = jraph.get_node_padding_mask(graph)
    edge_mask = jraph.get_edge_padding_mask(graph)
    vectors = edge_vectors(positions, cell, graph)
    vectors = jnp.where(edge_mask[:, None], vectors, 0.0)
    return module.apply(
        params, vectors, jnp.maximum(species, 0), graph.senders, graph.receivers, edge_mask,
        node_mask, node_graph_index(graph), graph.n_node,
    )


def energy_forces_stress(module, table, params, graph: jraph.GraphsTuple, compute_stress: bool = True) -> dict:
    """Energies (G,) eV, forces (N,3) eV/Å, stress (G,3,3) eV/Å³ (zero where not periodic),
    per-atom energies (N,) eV. Padding graphs/nodes give zeros."""
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
    out = {"energy": e_g, "energies": e_i}
    if compute_stress:
        d_pos, d_strain = grads
        volume = jnp.abs(jnp.linalg.det(cell))
        periodic = jnp.all(graph.globals[keys.PBC], axis=-1) if keys.PBC in graph.globals else jnp.ones(n_graph, bool)
        stress = d_strain / jnp.where(periodic, volume, 1.0)[:, None, None]
        out["stress"] = jnp.where(periodic[:, None, None], stress, 0.0)
    else:
        d_pos = grads
    out["forces"] = -d_pos
    return out


@dataclass
class Potential:
    """Config + module + parameters. Build with ``nnpes.build_potential``."""

    config: ModelConfig
    params: Any
    module: EnergyModel = None

    def __post_init__(self):
        if self.module is None:
            self.module = make_module(self.config)
        self.table = species_table(self.config)

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def elements(self) -> list[str]:
        return list(self.config.elements)

    def energy_forces_stress(self, params, graph, compute_stress: bool = True) -> dict:
        """Pure function of (params, padded graph); jit it yourself or use ``predict``."""
        return energy_forces_stress(self.module, self.table, params, graph, compute_stress)


def init_params(config: ModelConfig, module: EnergyModel, seed: int = 0):
    """Fresh parameters from a tiny dummy graph (two atoms of the first element)."""
    from ase import Atoms

    from nnpes.batching import pad_graph
    from nnpes.graph import atoms_to_graph

    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    atoms = Atoms(config.elements[:1] * 2, positions=[[0, 0, 0], [0, 0, 0.5 * config.cutoff + 0.1]])
    g = pad_graph(atoms_to_graph(atoms, config.cutoff), 3, 4, 2)
    g = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else jnp.asarray(x), g)
    table = species_table(config)
    species = jnp.asarray(table)[g.nodes[keys.NUMBERS]]
    vectors = edge_vectors(g.nodes[keys.POSITIONS], g.globals[keys.CELL], g)
    return module.init(
        jax.random.PRNGKey(seed), vectors, jnp.maximum(species, 0), g.senders, g.receivers,
        jraph.get_edge_padding_mask(g), jraph.get_node_padding_mask(g), node_graph_index(g), g.n_node,
    )
