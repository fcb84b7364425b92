"""Training batches: the few padded shapes of a training set (``Buckets``), the epoch plan (a pure
function of seed and epoch) and ``GraphLoader``, which pads batches in a background thread."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import jraph
import numpy as np

from nnpes.graph.padding import EDGE_STEP, NODE_STEP, batch, pad_graph

# ---- buckets: the few padded shapes of a training set ----------------------------------------------


@dataclass(frozen=True)
class Buckets:
    """A small, fixed, ascending set of padded shapes ``(n_node, n_edge, n_graph)``.

    Every batch is padded to the first bucket that holds it, so jit compiles at most
    ``len(buckets.shapes)`` times however the batches are drawn."""

    shapes: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if not self.shapes:
            raise ValueError("Buckets needs at least one shape")
        object.__setattr__(self, "shapes", tuple(sorted(tuple(int(v) for v in s) for s in self.shapes)))

    def fit(self, n_node: int, n_edge: int, n_graph: int) -> tuple[int, int, int]:
        """The smallest bucket for a batch of n_graph graphs / n_node nodes / n_edge edges (real
        counts; room for the padding graph and node is added here). Raises if none holds it."""
        for shape in self.shapes:
            if shape[0] > n_node and shape[1] >= n_edge and shape[2] > n_graph:
                return shape
        raise ValueError(
            f"a batch of {n_graph} graphs / {n_node} nodes / {n_edge} edges fits no padding bucket "
            f"(largest {self.shapes[-1]} as (nodes, edges, graphs)); the data holds bigger "
            f"structures than the buckets were built for: rebuild them from this data"
        )

    def pad(self, graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
        """Pad a batched numpy graph to its bucket."""
        shape = self.fit(int(np.sum(graph.n_node)), int(np.sum(graph.n_edge)), len(graph.n_node))
        return pad_graph(graph, *shape)

    @classmethod
    def from_sizes(
        cls,
        n_node: Sequence[int],
        n_edge: Sequence[int],
        *,
        batch_size: int,
        max_nodes: int | None = None,
        max_edges: int | None = None,
        seed: int = 0,
        max_buckets: int = 4,
        sample_epochs: int = 3,
    ) -> "Buckets":
        """Buckets for batches drawn from structures of the given sizes (one entry per structure).

        The largest bucket holds the worst batch the budgets allow (the ``batch_size`` largest
        structures, capped by max_nodes / max_edges), so no epoch can overflow. The smaller ones sit
        at quantiles of batches drawn for ``sample_epochs`` shuffled epochs; a smaller bucket is kept
        only if it saves at least 10 % of the nodes or edges of the one above (else the saving is
        not worth a compile)."""
        n_node = np.asarray(n_node, np.int64)
        n_edge = np.asarray(n_edge, np.int64)
        _check_budgets(n_node, n_edge, max_nodes, max_edges)
        top_n = np.sort(n_node)[::-1][:batch_size].sum()
        top_e = np.sort(n_edge)[::-1][:batch_size].sum()
        # A node budget also bounds edges (and vice versa) through the densest structure.
        ratio = n_edge / np.maximum(n_node, 1)
        worst_n = min(top_n, max_nodes) if max_nodes else top_n
        worst_e = min(top_e, max_edges) if max_edges else top_e
        worst_e = min(worst_e, int(np.ceil(worst_n * ratio.max())))
        if ratio.min() > 0:
            worst_n = min(worst_n, int(np.ceil(worst_e / ratio.min())))
        n_graph = min(batch_size, len(n_node)) + 1

        def rung(nodes, edges):
            return (_round_up(nodes + 1, NODE_STEP), _round_up(edges, EDGE_STEP), n_graph)

        shapes = [rung(worst_n, worst_e)]
        sizes = []
        for epoch in range(sample_epochs):
            for b in plan_batches(n_node, n_edge, batch_size=batch_size, max_nodes=max_nodes,
                                  max_edges=max_edges, seed=seed, epoch=epoch, shuffle=True):
                sizes.append((n_node[b].sum(), n_edge[b].sum()))
        sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
        quantiles = np.linspace(0.0, 1.0, max_buckets + 1)[1:-1][::-1]  # e.g. 0.75, 0.5, 0.25
        for q in quantiles:
            if len(sizes) == 0:
                break
            cand = rung(int(np.quantile(sizes[:, 0], q, method="higher")),
                        int(np.quantile(sizes[:, 1], q, method="higher")))
            above = shapes[-1]
            if cand[0] <= 0.9 * above[0] or cand[1] <= 0.9 * above[1]:
                shapes.append(tuple(min(c, a) for c, a in zip(cand, above)))
        return cls(tuple(shapes[:max_buckets]))


def _round_up(x: int, step: int) -> int:
    return max(-(-int(x) // step) * step, step)


def _check_budgets(n_node, n_edge, max_nodes, max_edges):
    for name, sizes, budget in (("nodes", n_node, max_nodes), ("edges", n_edge, max_edges)):
        if budget is not None and len(sizes) and sizes.max() > budget:
            k = int(np.argmax(sizes))
            raise ValueError(
                f"structure {k} has {int(sizes[k])} {name}, more than the per-batch budget "
                f"max_{name}={budget}; raise max_{name} (structures are never truncated)"
            )


def plan_batches(
    n_node, n_edge, *, batch_size: int, max_nodes=None, max_edges=None, seed=0, epoch=0, shuffle=True
) -> list[np.ndarray]:
    """Indices of each batch of one epoch: a permutation that is a pure function of (seed, epoch),
    cut greedily so no batch exceeds batch_size graphs, max_nodes nodes or max_edges edges."""
    n_node = np.asarray(n_node, np.int64)
    n_edge = np.asarray(n_edge, np.int64)
    order = np.arange(len(n_node))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(n_node))
    batches, start, nodes, edges = [], 0, 0, 0
    for pos, k in enumerate(order):
        full = pos - start >= batch_size
        full |= max_nodes is not None and nodes + n_node[k] > max_nodes
        full |= max_edges is not None and edges + n_edge[k] > max_edges
        if full and pos > start:
            batches.append(order[start:pos])
            start, nodes, edges = pos, 0, 0
        nodes += n_node[k]
        edges += n_edge[k]
    if start < len(order):
        batches.append(order[start:])
    return batches


# ---- the training loader ----------------------------------------------------------------------------


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


class GraphLoader:
    """Shuffled, budgeted, bucket-padded batches of unpadded numpy graphs, prepared in a background
    thread.

    Each epoch's order is a pure function of (seed, epoch): call ``set_epoch(epoch)`` before
    iterating (a resumed run then sees the same batches). Batches hold at most ``batch_size``
    graphs, ``max_nodes`` nodes and ``max_edges`` edges (real counts) and are padded to one of
    ``loader.shapes`` (at most 4 (n_node, n_edge, n_graph) shapes), so one epoch compiles at most
    that many times. A structure bigger than a budget raises ``ValueError`` at construction.
    Iteration yields padded numpy GraphsTuples; ``prefetch`` batches are built ahead in a thread
    (0: no thread), and an exception there is raised in the consumer."""

    def __init__(
        self,
        graphs: Sequence[jraph.GraphsTuple],
        *,
        batch_size: int,
        max_nodes: int | None = None,
        max_edges: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        buckets: Buckets | None = None,
        prefetch: int = 2,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.graphs = list(graphs)
        if not self.graphs:
            raise ValueError("GraphLoader got no graphs")
        self.n_node = np.array([int(np.sum(g.n_node)) for g in self.graphs], np.int64)
        self.n_edge = np.array([int(np.sum(g.n_edge)) for g in self.graphs], np.int64)
        _check_budgets(self.n_node, self.n_edge, max_nodes, max_edges)
        self.batch_size, self.max_nodes, self.max_edges = batch_size, max_nodes, max_edges
        self.shuffle, self.seed, self.prefetch, self.epoch = shuffle, seed, prefetch, 0
        self.buckets = buckets or Buckets.from_sizes(
            self.n_node, self.n_edge, batch_size=batch_size, max_nodes=max_nodes, max_edges=max_edges, seed=seed
        )

    @property
    def shapes(self) -> set[tuple[int, int, int]]:
        """Every padded shape a batch can have (the buckets)."""
        return set(self.buckets.shapes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self, epoch: int | None = None) -> list[np.ndarray]:
        """Structure indices of each batch of ``epoch`` (default: the current one)."""
        return plan_batches(
            self.n_node, self.n_edge, batch_size=self.batch_size, max_nodes=self.max_nodes,
            max_edges=self.max_edges, seed=self.seed, epoch=self.epoch if epoch is None else epoch,
            shuffle=self.shuffle,
        )

    def epoch_shapes(self, epoch: int | None = None) -> list[tuple[int, int, int]]:
        """Padded shape of each batch of ``epoch``, without building the batches."""
        return [
            self.buckets.fit(int(self.n_node[b].sum()), int(self.n_edge[b].sum()), len(b)) for b in self.plan(epoch)
        ]

    def __len__(self) -> int:
        return len(self.plan())

    def _make(self, indices: np.ndarray) -> jraph.GraphsTuple:
        try:
            return self.buckets.pad(batch([self.graphs[k] for k in indices]))
        except ValueError as error:
            raise ValueError(f"batch of structures {[int(k) for k in indices]}: {error}") from None

    def __iter__(self) -> Iterator[jraph.GraphsTuple]:
        plan = self.plan()
        if self.prefetch <= 0:
            for indices in plan:
                yield self._make(indices)
            return
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                for indices in plan:
                    if not put(self._make(indices)):
                        return
                put(_DONE)
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, who re-raises
                put(_Raised(error))

        worker = threading.Thread(target=produce, name="nnpes-GraphLoader", daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if item is _DONE:
                    return
                if isinstance(item, _Raised):
                    raise item.error
                yield item
        finally:
            # The consumer may stop early (break, exception): release the producer either way.
            stop.set()
            worker.join(timeout=5.0)
