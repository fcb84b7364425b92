"""The one prediction path for structures on the host: check, build graphs, group them into jitted
calls of bounded size, pad each call to a fixed shape ladder, and split the outputs per structure.
``Potential.predict`` and ``Ensemble.predict`` both run through ``predict_structures``."""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

import jax
import jraph
import numpy as np
from ase import Atoms

from nnpes import keys
from nnpes.graph.build import atoms_to_graph
from nnpes.graph.padding import batch, bucket_shape, pad_graph, to_device

log = logging.getLogger("nnpes")

# At most this many nodes / edges / graphs per jitted call (a larger structure goes alone). On the
# 2-core CPU, NequIP's time per aspirin frame rose once a call held more than ~2000 edges (per-edge
# intermediates leave the cache) while BP kept gaining up to ~20 frames; see
# benchmarks/predict_overhead.py.
MAX_NODES_PER_CALL = 4096
MAX_EDGES_PER_CALL = 2048
MAX_GRAPHS_PER_CALL = 64

# Where each output lives: (per "node" or per "graph", the axis that indexes nodes/graphs).
OUTPUT_LAYOUT = {
    name: ("node" if keys.FIELDS[name].where == "nodes" else "graph", 0)
    for name in (keys.ENERGY, keys.FORCES, keys.ENERGIES, keys.STRESS)
}


def check_structure(atoms: Atoms, elements: Sequence[str], index: int | None = None) -> None:
    """ValueError for an element the model lacks, an empty structure or non-finite geometry."""
    where = f"structure {index}: " if index is not None else ""
    unknown = sorted(set(atoms.get_chemical_symbols()) - set(elements))
    if unknown:
        raise ValueError(f"{where}element(s) {unknown} not in the model's elements {list(elements)}")
    if len(atoms) == 0:
        raise ValueError(f"{where}structure has no atoms")
    if not np.all(np.isfinite(atoms.positions)):
        bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1)).tolist()
        raise ValueError(f"{where}non-finite positions for atoms {bad[:10]}")
    if not np.all(np.isfinite(atoms.cell.array)):
        raise ValueError(f"{where}non-finite cell {atoms.cell.array.tolist()}")


def chunks(graphs: Sequence[jraph.GraphsTuple], max_nodes: int = MAX_NODES_PER_CALL,
           max_edges: int = MAX_EDGES_PER_CALL, max_graphs: int = MAX_GRAPHS_PER_CALL) -> Iterator[list]:
    """Consecutive groups of single-structure graphs that fit one jitted call's budget."""
    chunk, nodes, edges = [], 0, 0
    for g in graphs:
        n, e = int(g.n_node[0]), int(g.n_edge[0])
        full = nodes + n > max_nodes or edges + e > max_edges
        if chunk and (full or len(chunk) >= max_graphs):
            yield chunk
            chunk, nodes, edges = [], 0, 0
        chunk.append(g)
        nodes += n
        edges += e
    if chunk:
        yield chunk


def shared_shapes(shapes: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """One padded (n_node, n_edge, n_graph) per call, shared by calls of similar size so a set of
    structures compiles once: the call with the most edges leads a group of every call with at least half
    its nodes and edges, all padded to the group's largest sizes; the rest are grouped the same way. A mixed set of sizes thus
    compiles at most about log2(largest / smallest) times and never pads a call more than 2×
    (plus the ladder's rounding)."""
    out, todo = list(shapes), list(range(len(shapes)))
    while todo:
        lead = shapes[max(todo, key=lambda i: (shapes[i][1], shapes[i][0]))]  # most edges
        group = [i for i in todo if 2 * shapes[i][0] >= lead[0] and 2 * shapes[i][1] >= lead[1]]
        top = tuple(max(shapes[i][d] for i in group) for d in range(3))
        for i in group:
            out[i] = top
        todo = [i for i in todo if i not in set(group)]
    return out


def padded_batches(graphs: Sequence[jraph.GraphsTuple], max_edges: int = MAX_EDGES_PER_CALL,
                   seen: set | None = None):
    """(chunk, padded numpy batch) pairs for calls of bounded size (host arrays, float64), padded
    to a few shapes shared across the calls (``shared_shapes``). ``seen``: the shapes the caller's
    function is compiled for; new ones are logged (logger ``nnpes``) before the first call and added."""
    groups = [(chunk, batch(chunk)) for chunk in chunks(graphs, max_edges=max_edges)]
    shapes = shared_shapes([bucket_shape(b) for _, b in groups])
    if seen is not None:
        new = set(shapes) - seen
        if new:
            log.info("compiling %d padded shape%s for %d structures…", len(new), "s" if len(new) > 1 else "", len(graphs))
        seen |= new
    for (chunk, batched), shape in zip(groups, shapes):
        yield chunk, pad_graph(batched, *shape)


def _split(out: dict, chunk: Sequence[jraph.GraphsTuple], layout: dict) -> list[dict]:
    results, node0 = [], 0
    for g, graph in enumerate(chunk):
        n = int(graph.n_node[0])
        res = {}
        for key, (where, axis) in layout.items():
            if key in out:
                index = (slice(None),) * axis + ((slice(node0, node0 + n),) if where == "node" else (g,))
                v = np.asarray(out[key][index], np.float64)
                res[key] = float(v) if v.ndim == 0 else v
        results.append(res)
        node0 += n
    return results


def predict_structures(fn: Callable, atoms_list: Sequence[Atoms], cutoff: float, dtype, *,
                       layout: dict = OUTPUT_LAYOUT, max_edges: int = MAX_EDGES_PER_CALL,
                       seen: set | None = None, check_graphs: Callable | None = None) -> list[dict]:
    """``fn(padded device graph) -> dict`` over ``atoms_list``, one dict of float64 numpy outputs per
    structure (``layout`` says which are per node and per graph). ``stress`` is kept only for fully
    periodic structures. ``seen``: see ``padded_batches``. ``check_graphs(graphs)``: called once with
    the structures' host graphs before any prediction (e.g. to warn of close contacts)."""
    from nnpes import compile_cache

    compile_cache.enable()  # the next process predicting these shapes loads them instead of compiling
    graphs = [atoms_to_graph(a, cutoff) for a in atoms_list]
    if check_graphs is not None:
        check_graphs(graphs)
    results = []
    for chunk, padded in padded_batches(graphs, max_edges, seen):
        out = jax.tree_util.tree_map(np.asarray, fn(to_device(padded, dtype)))
        results.extend(_split(out, chunk, layout))
    for atoms, res in zip(atoms_list, results):
        if not np.all(atoms.pbc):
            res.pop(keys.STRESS, None)
    return results
