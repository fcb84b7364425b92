"""Padding graphs to a few fixed shapes so jit compiles a handful of times, not per batch.

Padding convention (the same as ``jraph.pad_with_graphs``, so ``jraph.get_*_padding_mask`` work):
a padded batch ends with at least one padding graph; the first padding graph owns every padding
node and edge, the others are empty. Padding nodes have atomic number 0 and sit at the origin;
padding edges join the first padding node to itself with a zero shift, so their vector is zero
and models must mask them (``jraph.get_edge_padding_mask``). Padding graphs have an identity cell,
zero labels and zero weight, so they contribute exactly zero to every sum.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from nnpes import keys


def batch(graphs: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Concatenate unpadded graphs into one (numpy)."""
    return jraph.batch_np(list(graphs))


def pad_graph(graph: jraph.GraphsTuple, n_node: int, n_edge: int, n_graph: int) -> jraph.GraphsTuple:
    """Pad a (batched) numpy graph to exactly n_node nodes, n_edge edges and n_graph graphs.

    Needs n_node > real nodes and n_graph > real graphs (room for the padding graph); n_edge ≥ real edges."""
    real_nodes = int(np.sum(graph.n_node))
    real_edges = int(np.sum(graph.n_edge))
    real_graphs = len(graph.n_node)
    if n_node <= real_nodes or n_edge < real_edges or n_graph <= real_graphs:
        raise ValueError(
            f"cannot pad {real_graphs} graphs / {real_nodes} nodes / {real_edges} edges to "
            f"{n_graph} / {n_node} / {n_edge}: padding needs one more graph and node than the data"
        )
    pn, pe, pg = n_node - real_nodes, n_edge - real_edges, n_graph - real_graphs

    def pad_rows(x: np.ndarray, count: int, fill=0) -> np.ndarray:
        block = np.full((count,) + x.shape[1:], fill, dtype=x.dtype)
        return np.concatenate([x, block], axis=0)

    nodes = {k: pad_rows(np.asarray(v), pn) for k, v in graph.nodes.items()}
    edges = {k: pad_rows(np.asarray(v), pe) for k, v in graph.edges.items()}
    globals_ = {k: pad_rows(np.asarray(v), pg) for k, v in graph.globals.items()}
    if keys.CELL in globals_:
        globals_[keys.CELL][real_graphs:] = np.eye(3)
    first_pad_node = real_nodes
    senders = pad_rows(np.asarray(graph.senders), pe, first_pad_node)
    receivers = pad_rows(np.asarray(graph.receivers), pe, first_pad_node)
    n_node_arr = np.concatenate([graph.n_node, [pn], np.zeros(pg - 1, np.int32)]).astype(np.int32)
    n_edge_arr = np.concatenate([graph.n_edge, [pe], np.zeros(pg - 1, np.int32)]).astype(np.int32)
    return jraph.GraphsTuple(
        nodes=nodes, edges=edges, globals=globals_, senders=senders.astype(np.int32),
        receivers=receivers.astype(np.int32), n_node=n_node_arr, n_edge=n_edge_arr,
    )


# ---- shape ladders for prediction and MD ----------------------------------------------------------

NODE_STEP, NODE_LINEAR_UNTIL = 8, 64  # nodes: multiples of 8 up to 64, then geometric
EDGE_STEP, EDGE_LINEAR_UNTIL = 64, 1024  # edges: multiples of 64 up to 1024, then geometric
LADDER_GROWTH = 1.25


def ladder_size(x: int, step: int, linear_until: int, growth: float = LADDER_GROWTH) -> int:
    """Smallest value ≥ x on a fixed ladder: multiples of ``step`` up to ``linear_until``, then
    rungs growing by ``growth`` (each rounded up to a multiple of ``step``). The rungs do not
    depend on x, so a structure whose size drifts (MD) revisits the same few shapes, and padding
    stays under ``growth`` − 1 (25 %) beyond the linear part."""
    x = max(int(x), 1)
    if x <= linear_until:
        return -(-x // step) * step
    v = linear_until
    while v < x:
        v = -(-int(np.ceil(v * growth)) // step) * step
    return v


def bucket_shape(graph: jraph.GraphsTuple) -> tuple[int, int, int]:
    """(n_node, n_edge, n_graph) of ``graph`` padded up the fixed ladders: nodes get one padding
    node at least (``ladder_size(n + 1, 8, 64)``), edges ``ladder_size(e, 64, 1024)``, graphs the
    next power of two above the real count (at least 2)."""
    n_node = ladder_size(int(np.sum(graph.n_node)) + 1, NODE_STEP, NODE_LINEAR_UNTIL)
    n_edge = ladder_size(int(np.sum(graph.n_edge)), EDGE_STEP, EDGE_LINEAR_UNTIL)
    n_graph = 1 << int(len(graph.n_node)).bit_length()  # > real graphs, power of two
    return n_node, n_edge, max(n_graph, 2)


def pad_to_bucket(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """Pad a (batched) numpy graph up the fixed node / edge / graph ladders (``bucket_shape``)."""
    return pad_graph(graph, *bucket_shape(graph))


def to_device(graph: jraph.GraphsTuple, dtype) -> jraph.GraphsTuple:
    """Cast floating arrays to ``dtype`` (the model dtype) and move everything to the default
    device; integer and bool arrays keep their dtypes."""
    dtype = jnp.dtype(dtype)

    def move(x):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(dtype, copy=False)
        return jax.device_put(x)

    return jax.tree_util.tree_map(move, graph)


def device_graph(atoms, cutoff: float, dtype) -> jraph.GraphsTuple:
    """One ase.Atoms or a list as one batched graph at ``cutoff`` (Å), padded up the fixed ladder
    (``pad_to_bucket``) and on the default device with floats in ``dtype``: the input of
    ``energy_forces_stress`` and of ``nnpes.training.make_train_step``'s step in your own loops."""
    from ase import Atoms

    from nnpes.graph.build import atoms_to_graph

    atoms_list = [atoms] if isinstance(atoms, Atoms) else list(atoms)
    return to_device(pad_to_bucket(batch([atoms_to_graph(a, cutoff) for a in atoms_list])), dtype)
