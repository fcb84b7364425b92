"""Data-parallel training and sharded committees on a ``jax.sharding.Mesh`` (SPMD ``jit``, not ``pmap``).

A padded jraph batch cannot be cut along its node axis (edges index nodes), so a global batch is
split into D sub-batches of whole structures, each padded to one common shape and stacked along a
new leading axis of size D::

    mesh = make_mesh()                        # 1-D mesh, axis "data", all devices
    stacked = shard_batch(padded_batch, mesh, jnp.float32)    # (D, ...) leaves, sharded over "data"
    step = data_parallel_step(train_step, mesh, batch_argnums=(4,))

Inside the step the per-sub-batch work is ``jax.vmap``-ed over the leading axis; the loss is the
global weighted mean Σ_d num_d / Σ_d den_d (``stacked_loss_and_pred``), so D sub-batches give the
loss of the undivided batch and the compiler inserts the cross-device gradient reduction. With
D = 1 the numbers are those of the plain step.

Multi-host: call ``initialize_distributed()`` (wraps ``jax.distributed.initialize``: SLURM / Open
MPI / explicit coordinator) before anything else touches JAX; ``make_mesh`` then spans the devices of
every process, every process runs the same loader (same seed → same order) and ``shard_batch`` /
``replicate`` hand each process only its own devices' shards (``jax.make_array_from_callback``).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nnpes import keys
from nnpes.graph import batch as batch_graphs
from nnpes.graph import pad_graph

AXIS = "data"


# ---- mesh and placement -------------------------------------------------------------------------


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-process run (one process per host, or per GPU). Without arguments JAX reads
    the cluster environment (SLURM, Open MPI, ...); else give the coordinator ``host:port``, the
    number of processes and this process's id (env ``NNPES_COORDINATOR``, ``NNPES_NUM_PROCESSES``,
    ``NNPES_PROCESS_ID`` are used when set). Call before any other JAX call."""
    env = os.environ
    coordinator_address = coordinator_address or env.get("NNPES_COORDINATOR")
    if num_processes is None and "NNPES_NUM_PROCESSES" in env:
        num_processes = int(env["NNPES_NUM_PROCESSES"])
    if process_id is None and "NNPES_PROCESS_ID" in env:
        process_id = int(env["NNPES_PROCESS_ID"])
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(num_devices: int | str | None = None, devices: Sequence | None = None) -> Mesh:
    """1-D mesh with axis ``"data"`` over the first ``num_devices`` devices (None / "all": every
    device of every process). ValueError if more are asked for than exist."""
    devices = list(jax.devices() if devices is None else devices)
    if num_devices in (None, "all"):
        n = len(devices)
    else:
        n = int(num_devices)
        if n < 1 or n > len(devices):
            raise ValueError(
                f"asked for {num_devices} devices but {len(devices)} are available "
                f"({devices[0].platform}); on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                "before JAX starts to simulate more"
            )
    return Mesh(np.asarray(devices[:n]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over ``"data"``."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def _put(x, sharding: NamedSharding):
    # make_array_from_callback only materialises this process's shards, so the same call works
    # on one host and on many (where device_put of host data to remote devices is not allowed).
    x = np.asarray(x) if not isinstance(x, jax.Array) or not x.is_fully_addressable else x
    return jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x[idx]))


def replicate(tree, mesh: Mesh):
    """Every leaf replicated on every device of ``mesh`` (parameters, optimiser state)."""
    sh = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: _put(x, sh), tree)


def shard_leading(tree, mesh: Mesh):
    """Every leaf split along its leading axis over ``"data"`` (its length must divide evenly)."""
    sh = sharded(mesh)
    for leaf in jax.tree_util.tree_leaves(tree):
        if np.shape(leaf)[0] % mesh.size:
            raise ValueError(f"leading axis {np.shape(leaf)[0]} does not divide over {mesh.size} devices")
    return jax.tree_util.tree_map(lambda x: _put(x, sh), tree)


def shard_members(stacked_params, mesh: Mesh):
    """Committee parameters (leading member axis K, ``nnpes.active.ensemble``) split over the
    devices: each device holds K/D members and evaluates them; the committee mean and spread are
    reduced by the compiler. K must be a multiple of the mesh size (ValueError otherwise: build the
    mesh with ``make_mesh(num_devices=d)`` for a divisor d of K)."""
    k = int(np.shape(jax.tree_util.tree_leaves(stacked_params)[0])[0])
    if k % mesh.size:
        divisors = [d for d in range(1, mesh.size + 1) if k % d == 0]
        raise ValueError(
            f"cannot shard a committee of {k} members over {mesh.size} devices; use a mesh of "
            f"{divisors[-1]} devices (make_mesh(num_devices={divisors[-1]})) or {mesh.size * math.ceil(k / mesh.size)} members"
        )
    return shard_leading(stacked_params, mesh)


# ---- splitting a batch into equal-shape sub-batches ----------------------------------------------


def _ladder(x: int, minimum: int) -> int:
    """Smallest value ≥ x on minimum·{1, 1.5}·2^k: few distinct shapes (few compiles), < 50 % padding."""
    v = minimum
    while v < x:
        v = v * 3 // 2 if (v & (v - 1)) == 0 else v * 4 // 3
    return v


def _n_real(n_node: np.ndarray) -> int:
    trailing_empty = 0
    while trailing_empty < len(n_node) and n_node[-1 - trailing_empty] == 0:
        trailing_empty += 1
    return len(n_node) - trailing_empty - 1


def unpad(graph: jraph.GraphsTuple) -> list[jraph.GraphsTuple]:
    """The real structures of a padded numpy batch, one GraphsTuple each (jraph convention: the
    padding graphs are the trailing empty graphs plus the one before them, which owns the padding
    nodes)."""
    n_node = np.asarray(graph.n_node)
    n_real = _n_real(n_node)
    if n_real <= 0:
        return []
    n_nodes, n_edges = int(np.sum(n_node[:n_real])), int(np.sum(np.asarray(graph.n_edge)[:n_real]))
    cut = lambda tree, n: jax.tree_util.tree_map(lambda x: np.asarray(x)[:n], tree)  # noqa: E731
    real = jraph.GraphsTuple(
        nodes=cut(graph.nodes, n_nodes), edges=cut(graph.edges, n_edges), globals=cut(graph.globals, n_real),
        senders=np.asarray(graph.senders)[:n_edges], receivers=np.asarray(graph.receivers)[:n_edges],
        n_node=n_node[:n_real], n_edge=np.asarray(graph.n_edge)[:n_real],
    )
    return jraph.unbatch_np(real)


def _groups(sizes: np.ndarray, n_groups: int) -> list[list[int]]:
    """Whole structures into ``n_groups`` groups of at most ceil(n / n_groups) each, balancing atoms
    (largest first onto the lightest group); each group keeps the batch's order."""
    cap = max(1, math.ceil(len(sizes) / n_groups))
    load = np.zeros(n_groups, np.int64)
    members: list[list[int]] = [[] for _ in range(n_groups)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        open_ = [g for g in range(n_groups) if len(members[g]) < cap]
        g = min(open_, key=lambda g: (load[g], g))
        members[g].append(i)
        load[g] += sizes[i]
    return [sorted(m) for m in members]


def _empty_like(g: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """A batch of zero structures with ``g``'s fields (to pad into a sub-batch that got none)."""
    z = lambda x: np.zeros((0,) + np.shape(x)[1:], np.asarray(x).dtype)  # noqa: E731
    return jraph.GraphsTuple(
        nodes=jax.tree_util.tree_map(z, g.nodes), edges=jax.tree_util.tree_map(z, g.edges),
        globals=jax.tree_util.tree_map(z, g.globals), senders=np.zeros(0, np.int32),
        receivers=np.zeros(0, np.int32), n_node=np.zeros(0, np.int32), n_edge=np.zeros(0, np.int32),
    )


def split_batch(graphs: jraph.GraphsTuple | Sequence[jraph.GraphsTuple], n_shards: int,
                shape: tuple[int, int, int] | None = None) -> jraph.GraphsTuple:
    """Split a batch into ``n_shards`` sub-batches of whole structures, pad each to one common
    (n_node, n_edge, n_graph) and stack them: numpy leaves with a leading axis ``n_shards``.

    ``graphs``: a padded batch (as a loader yields) or a list of unpadded structures. Every
    structure lands in exactly one sub-batch; a batch that does not divide evenly (even one with
    fewer structures than shards) is filled with padding, never dropped. ``shape``: the padded
    sub-batch shape; by default the smallest ladder shape that fits (a few shapes over a run, so a
    few compiles)."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    structures = unpad(graphs) if isinstance(graphs, jraph.GraphsTuple) else list(graphs)
    if not structures:
        raise ValueError("split_batch: the batch holds no structures")
    sizes = np.asarray([int(np.sum(g.n_node)) for g in structures])
    groups = _groups(sizes, n_shards)
    subs = [batch_graphs([structures[i] for i in m]) if m else _empty_like(structures[0]) for m in groups]
    need = (
        max(int(np.sum(s.n_node)) for s in subs) + 1,
        max(int(np.sum(s.n_edge)) for s in subs),
        max(len(s.n_node) for s in subs) + 1,
    )
    if shape is None:
        shape = (_ladder(need[0], 16), _ladder(need[1], 64), _ladder(need[2], 2))
    elif any(s < n for s, n in zip(shape, need)):
        raise ValueError(f"split_batch: sub-batch needs at least (n_node, n_edge, n_graph) = {need}, got shape {shape}")
    padded = [pad_graph(s, *shape) for s in subs]
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *padded)


def sub_batch_shape(graphs: Sequence[jraph.GraphsTuple], batch_size: int, n_shards: int) -> tuple[int, int, int]:
    """(n_node, n_edge, n_graph) that holds any ``split_batch`` sub-batch of any ``batch_size``
    structures from ``graphs`` over ``n_shards``: one padded shape, so one compile for a run."""
    per = max(1, math.ceil(batch_size / n_shards))
    nodes = sorted((int(np.sum(g.n_node)) for g in graphs), reverse=True)[:per]
    edges = sorted((int(np.sum(g.n_edge)) for g in graphs), reverse=True)[:per]
    return sum(nodes) + 1, sum(edges), per + 1


def _cast(x, dtype):
    x = np.asarray(x)
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x


def shard_batch(graphs, mesh: Mesh, dtype=jnp.float32, shape=None) -> jraph.GraphsTuple:
    """``split_batch`` into ``mesh.size`` sub-batches, floats cast to ``dtype`` (the model dtype),
    placed with the leading axis over ``"data"``: each device receives its own sub-batch. An
    already stacked numpy batch (leading axis = mesh.size) is only cast and placed."""
    if isinstance(graphs, jraph.GraphsTuple) and np.ndim(graphs.n_node) == 2:
        stacked = graphs
    else:
        stacked = split_batch(graphs, mesh.size, shape)
    stacked = jax.tree_util.tree_map(lambda x: _cast(x, np.dtype(dtype)), stacked)
    return shard_leading(stacked, mesh)


def real_graphs(stacked: jraph.GraphsTuple) -> int:
    """Number of real structures in a stacked batch (host side, for metric averages)."""
    return sum(_n_real(row) for row in np.asarray(stacked.n_node))


# ---- the step -----------------------------------------------------------------------------------


def stacked_loss_and_pred(efs: Callable, params, graphs: jraph.GraphsTuple, weights, *, kind: str = "mse",
                          delta: float = 0.01, energy_per_atom: bool = True, mesh: Mesh | None = None,
                          terms: bool = False):
    """Loss of a stacked batch (leading axis D) as the weighted mean over all its real structures,
    Σ_d Σ_k c_k ℓ_k / Σ_d Σ_k c_k: the same number as ``training.loss.total_loss`` on the undivided
    batch. ``efs(params, graph) -> pred`` is the energy/forces/stress function of one padded
    sub-batch; ``params`` (a PyTree, replicated) and ``weights`` are passed through explicitly so
    that they enter ``shard_map`` as replicated inputs. Returns (loss, stacked predictions); with
    ``terms=True`` also the loss terms ``{energy, forces, stress}`` (``loss.mean_terms``: w_X L_X,
    adding up to the loss).

    With ``mesh`` the per-device work runs under ``shard_map``: each device evaluates its own
    sub-batch as a plain (un-vmapped) graph and the sums are ``psum``-ed; without it, ``vmap``
    over the leading axis (any placement). Both give the same numbers; ``shard_map`` avoids the
    batched gathers/scatters that ``vmap`` makes of the model's index operations."""
    from nnpes.training.loss import loss_sums, mean_terms

    def one(params, weights, graph):
        pred = efs(params, graph)
        nums, den = loss_sums(pred, graph, weights, kind=kind, delta=delta, energy_per_atom=energy_per_atom)
        return nums, den, pred

    def local(params, weights, graphs):
        if graphs.n_node.shape[0] == 1:  # one sub-batch here: evaluate it as a plain graph
            nums, den, pred = one(params, weights, jax.tree_util.tree_map(lambda x: x[0], graphs))
            return nums, den, jax.tree_util.tree_map(lambda x: x[None], pred)
        nums, den, pred = jax.vmap(one, in_axes=(None, None, 0))(params, weights, graphs)
        return jax.tree_util.tree_map(jnp.sum, nums), jnp.sum(den), pred

    def sharded(params, weights, graphs):
        nums, den, pred = local(params, weights, graphs)
        loss, parts = mean_terms(jax.lax.psum(nums, AXIS), jax.lax.psum(den, AXIS))
        return loss, pred, parts

    if mesh is None:
        nums, den, pred = local(params, weights, graphs)
        loss, parts = mean_terms(nums, den)
    else:
        rep, spec = PartitionSpec(), PartitionSpec(AXIS)
        loss, pred, parts = jax.shard_map(sharded, mesh=mesh, in_specs=(rep, rep, spec),
                                          out_specs=(rep, spec, rep))(params, weights, graphs)
    return (loss, pred, parts) if terms else (loss, pred)


def stacked_error_sums(pred, graphs: jraph.GraphsTuple) -> dict:
    """``training.loss.error_sums`` of each sub-batch, summed over the leading axis."""
    from nnpes.training.loss import error_sums

    return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), jax.vmap(error_sums)(pred, graphs))


def data_parallel_step(step_fn: Callable, mesh: Mesh, *, batch_argnums: Sequence[int] = (),
                       n_args: int | None = None, donate_argnums: Sequence[int] = ()):
    """``jax.jit(step_fn)`` for the mesh: positional arguments in ``batch_argnums`` (stacked
    batches, leading axis D) are split over ``"data"``; every other argument and every output is
    replicated. ``n_args``: number of positional arguments (default: from the signature)."""
    import inspect

    if n_args is None:
        n_args = len(inspect.signature(step_fn).parameters)
    rep, shd = replicated(mesh), sharded(mesh)
    in_shardings = tuple(shd if i in tuple(batch_argnums) else rep for i in range(n_args))
    return jax.jit(step_fn, in_shardings=in_shardings, out_shardings=rep, donate_argnums=tuple(donate_argnums))


# ---- a loader that yields stacked batches -------------------------------------------------------


def maybe_initialize_distributed() -> bool:
    """Join a multi-process run when the environment describes one (``NNPES_COORDINATOR``, or
    SLURM with more than one task) and JAX has not joined yet. Returns whether it did."""
    env = os.environ
    wanted = "NNPES_COORDINATOR" in env or int(env.get("SLURM_NTASKS", "1")) > 1
    if not wanted or jax.distributed.is_initialized():
        return False
    initialize_distributed()
    return True


def training_mesh(devices: int | str) -> Mesh | None:
    """The mesh for ``training.devices`` (1 → None: the plain single-device step; an int or "all"
    → a 1-D mesh over that many devices, joining a multi-process run first when the environment
    describes one)."""
    if devices == 1:
        return None
    if devices != "all" and (not isinstance(devices, int) or devices < 1):
        raise ValueError(f"training.devices: expected a positive integer or 'all', got {devices!r}")
    maybe_initialize_distributed()
    return make_mesh(devices)


def with_matmul_precision(fn: Callable, precision: str | None) -> Callable:
    """``fn`` called (and therefore traced) under ``jax.default_matmul_precision(precision)``;
    ``None`` / "default" leaves JAX's default (reduced TF32 matmuls on recent NVIDIA GPUs)."""
    if precision in (None, "default"):
        return fn

    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision(precision):
            return fn(*args, **kwargs)

    return wrapped


class ShardedLoader:
    """Wraps a loader of padded batches (``GraphLoader``): each global batch is split into
    ``n_shards`` equal-shape sub-batches (``split_batch``, padded to ``shape``: with
    ``sub_batch_shape`` one shape for the run). Same order as the wrapped loader (``set_epoch``
    passes through), so a D-device run sees the batches of the 1-device run."""

    def __init__(self, loader, n_shards: int, shape: tuple[int, int, int] | None = None):
        self.loader, self.n_shards, self.shape = loader, int(n_shards), shape
        self.shapes: set = set()

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for graph in self.loader:
            stacked = split_batch(graph, self.n_shards, self.shape)
            self.shapes.add((int(stacked.nodes[keys.NUMBERS].shape[1]), int(stacked.senders.shape[1]),
                             int(stacked.n_node.shape[1])))
            yield stacked
