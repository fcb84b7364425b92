"""ase.Atoms → ``jraph.GraphsTuple`` (host side, numpy), and the edge geometry used by models.

A graph holds (see ``nnpes.keys`` for shapes and units):
  nodes   {positions, numbers, forces}
  edges   {shifts}
  globals {cell, pbc, energy, stress, has_energy, has_forces, has_stress, weight}
  senders = neighbour j, receivers = centre i (see ``nnpes.graph.neighbors``), sorted by receiver.
Labels that a structure lacks are zeros with the matching ``has_*`` flag set to 0.
"""

from __future__ import annotations

import jax.numpy as jnp
import jraph
import numpy as np
from ase import Atoms

from nnpes import keys
from nnpes.data.labels import reference_labels
from nnpes.graph.neighbors import neighbor_list


def atoms_to_graph(atoms: Atoms, cutoff: float, weight: float = 1.0) -> jraph.GraphsTuple:
    """One structure as an unpadded GraphsTuple (numpy arrays, float64 geometry)."""
    n = len(atoms)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    energy, forces, stress = reference_labels(atoms)
    nodes = {
        keys.POSITIONS: np.asarray(atoms.positions, np.float64),
        keys.NUMBERS: np.asarray(atoms.numbers, np.int32),
        keys.FORCES: np.zeros((n, 3)) if forces is None else np.asarray(forces, np.float64),
    }
    globals_ = {
        keys.CELL: np.asarray(atoms.cell.array, np.float64)[None],
        keys.PBC: np.asarray(atoms.pbc, bool)[None],
        keys.ENERGY: np.array([0.0 if energy is None else float(energy)]),
        keys.STRESS: (np.zeros((3, 3)) if stress is None else stress)[None],
        keys.HAS_ENERGY: np.array([float(energy is not None)]),
        keys.HAS_FORCES: np.array([float(forces is not None)]),
        keys.HAS_STRESS: np.array([float(stress is not None)]),
        keys.WEIGHT: np.array([float(weight)]),
    }
    return jraph.GraphsTuple(
        nodes=nodes,
        edges={keys.SHIFTS: nl.shifts.astype(np.float64)},
        senders=nl.senders,
        receivers=nl.receivers,
        globals=globals_,
        n_node=np.array([n], np.int32),
        n_edge=np.array([len(nl.senders)], np.int32),
    )


# ---- device-side helpers shared by every model (pure jnp, jit-friendly) -------------------------


def node_graph_index(graph: jraph.GraphsTuple) -> jnp.ndarray:
    """(N,) index of the graph each node belongs to."""
    n_graph = graph.n_node.shape[0]
    return jnp.repeat(jnp.arange(n_graph), graph.n_node, total_repeat_length=graph.nodes[keys.POSITIONS].shape[0])


def edge_graph_index(graph: jraph.GraphsTuple) -> jnp.ndarray:
    """(E,) index of the graph each edge belongs to."""
    n_graph = graph.n_edge.shape[0]
    return jnp.repeat(jnp.arange(n_graph), graph.n_edge, total_repeat_length=graph.senders.shape[0])


def edge_vectors(positions: jnp.ndarray, cell: jnp.ndarray, graph: jraph.GraphsTuple) -> jnp.ndarray:
    """(E, 3) Å: r_j - r_i + S @ cell. ``positions`` (N, 3) and ``cell`` (G, 3, 3) are passed
    explicitly so forces and stress can differentiate through them."""
    shifts = graph.edges[keys.SHIFTS].astype(positions.dtype)
    cell_e = cell[edge_graph_index(graph)]
    offset = jnp.einsum("ei,eij->ej", shifts, cell_e)
    return positions[graph.senders] - positions[graph.receivers] + offset
