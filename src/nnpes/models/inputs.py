"""The one input structure of every model, and the function that makes it from a padded graph.

``EnergyModel`` (``nnpes.models.energy``) takes a ``ModelInputs``; prediction, training, the
calibration hooks and parameter initialisation build it with ``model_inputs``, and the on-device MD
energy function (``nnpes.md.functions``) fills the same fields from its Verlet list.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp
import jraph
import numpy as np

from nnpes import keys
from nnpes.graph.build import edge_vectors, node_graph_index


class ModelInputs(NamedTuple):
    """vectors (E,3) Å, r_j − r_i + S·cell, zero on padding edges; species (N,) int32 index into the
    model's elements (0 on padding); senders, receivers (E,) int32 sorted by receiver; edge_mask (E,)
    and node_mask (N,) bool, False on padding; node_graph (N,) graph of each node; n_node (G,);
    pairs: optional ``nequip_ops.EdgePairs`` (each edge with its reverse) when the caller knows
    them (the MD loop's list, ``EnergyFn``); models that pair edges sort for them otherwise."""

    vectors: jnp.ndarray
    species: jnp.ndarray
    senders: jnp.ndarray
    receivers: jnp.ndarray
    edge_mask: jnp.ndarray
    node_mask: jnp.ndarray
    node_graph: jnp.ndarray
    n_node: jnp.ndarray
    pairs: Any = None


def species_table(numbers) -> np.ndarray:
    """(119,) int32: atomic number → index in ``numbers`` (atomic numbers, or a ``ModelConfig``:
    its elements' numbers), −1 if unknown (0 → 0 for padding)."""
    numbers = getattr(numbers, "numbers", numbers)
    table = np.full(119, -1, np.int32)
    table[np.asarray(numbers, np.int64)] = np.arange(len(numbers), dtype=np.int32)
    table[0] = 0
    return table


def model_inputs(graph: jraph.GraphsTuple, table, positions=None, cell=None) -> ModelInputs:
    """``ModelInputs`` of a padded graph. ``positions`` (N,3) and ``cell`` (G,3,3) default to the
    graph's; pass them explicitly to differentiate through them (forces, stress)."""
    positions = graph.nodes[keys.POSITIONS] if positions is None else positions
    cell = graph.globals[keys.CELL] if cell is None else cell
    edge_mask = jraph.get_edge_padding_mask(graph)
    vectors = jnp.where(edge_mask[:, None], edge_vectors(positions, cell, graph), 0.0)
    species = jnp.maximum(jnp.asarray(table)[graph.nodes[keys.NUMBERS]], 0)
    return ModelInputs(vectors, species, graph.senders, graph.receivers, edge_mask,
                       jraph.get_node_padding_mask(graph), node_graph_index(graph), graph.n_node)
