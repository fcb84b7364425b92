"""Padding, buckets and the loader: padding must contribute exactly nothing, and every epoch must
use a handful of shapes in an order fixed by (seed, epoch)."""

import functools
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from nnpes import keys
from nnpes.models.inputs import model_inputs
from nnpes.graph import (
    Buckets,
    GraphLoader,
    batch,
    ladder_size,
    pad_graph,
    pad_to_bucket,
    plan_batches,
    to_device,
)
from nnpes.graph import atoms_to_graph, edge_vectors
from nnpes.models.energy import EnergyModel
from nnpes.potential import energy_forces_stress

CUTOFF = 3.0


class _PairManyBody(nn.Module):
    """Tiny test model: species-pair radial terms summed per atom, then a nonlinearity (so the
    per-atom energy is not a plain pair sum)."""

    n_species: int = 2

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask):
        r2 = jnp.sum(vectors**2, axis=-1)
        r = jnp.sqrt(jnp.where(edge_mask, r2, 1.0))  # padding edges have r = 0: never divide by it
        fc = jnp.where(edge_mask & (r < CUTOFF), 0.5 * (jnp.cos(jnp.pi * r / CUTOFF) + 1.0), 0.0)
        basis = jnp.stack([jnp.exp(-r), jnp.exp(-0.5 * r * r), 1.0 / r], axis=-1)
        w = self.param("w", nn.initializers.normal(1.0), (self.n_species, self.n_species, 3), vectors.dtype)
        pair = jnp.sum(w[species[receivers], species[senders]] * basis, axis=-1) * fc
        e = jax.ops.segment_sum(pair, receivers, num_segments=species.shape[0], indices_are_sorted=True)
        a = self.param("a", nn.initializers.constant(0.7), (), vectors.dtype)
        return e + a * jnp.tanh(e) ** 2


def _structures():
    rng = np.random.default_rng(0)
    cu_al = Atoms("Cu2Al2", positions=rng.uniform(0, 3, (4, 3)),
                  cell=[[3.1, 0.2, 0.0], [0.4, 2.9, 0.1], [0.2, -0.3, 3.3]], pbc=True)  # images
    molecule = Atoms("CuAl3Cu", positions=np.cumsum(rng.uniform(0.6, 1.4, (5, 3)), axis=0))
    slab = Atoms("Cu6", positions=rng.uniform(0, 4, (6, 3)) - 3.0, cell=[[4.2, 0, 0], [1.0, 3.9, 0], [0, 0, 0]],
                 pbc=[True, True, False])
    bulk8 = Atoms("Al4Cu4", positions=rng.uniform(0, 4.5, (8, 3)), cell=np.diag([4.5, 4.4, 4.6]), pbc=True)
    for a in (cu_al, molecule, slab, bulk8):  # pull atoms apart a little so no pair is very close
        a.positions += rng.normal(size=a.positions.shape) * 0.05
    return [cu_al, molecule, slab, bulk8]


@pytest.fixture(scope="module")
def model():
    module = EnergyModel(inner=_PairManyBody(), e0_init=(-1.3, -0.4), scale_init=1.1)
    table = np.full(119, -1, np.int32)
    table[0], table[29], table[13] = 0, 0, 1
    graphs = [atoms_to_graph(a, CUTOFF) for a in _structures()]

    @jax.jit
    def init(g):
        params = module.init(jax.random.PRNGKey(0), model_inputs(g, table))
        return jax.tree_util.tree_map(lambda x: x + 0.1, params)  # offset and e0 non-zero too

    params = init(to_device(pad_to_bucket(batch(graphs)), jnp.float64))
    fn = jax.jit(functools.partial(energy_forces_stress, module, table), static_argnums=2)
    return fn, params, graphs


def _run(model, padded):
    fn, params, _ = model
    return jax.tree_util.tree_map(np.asarray, fn(params, to_device(padded, jnp.float64), True))


def test_padding_contributes_exactly_zero(model):
    _, _, graphs = model
    n_max = max(int(g.n_node[0]) for g in graphs) + 1
    e_max = max(int(g.n_edge[0]) for g in graphs)
    alone = [_run(model, pad_graph(g, n_max, e_max, 2)) for g in graphs]  # one shape, one compile
    for a, g in zip(alone, graphs):
        n = int(g.n_node[0])
        assert np.all(a["forces"][n:] == 0.0) and np.all(a["energies"][n:] == 0.0)
        assert a["energy"][1] == 0.0 and np.all(a["stress"][1] == 0.0)
        assert np.abs(a["forces"][:n]).max() > 1e-3  # the model really does something
    assert np.abs(alone[0]["stress"][0]).max() > 1e-4  # periodic: non-zero stress
    assert np.all(alone[1]["stress"][0] == 0.0)  # molecule: stress is defined as zero

    full = batch(graphs)
    shape = (int(full.n_node.sum()) + 7, int(full.n_edge.sum()) + 64, len(graphs) + 3)
    for order in ([0, 1, 2, 3], [3, 2, 0, 1], [2, 0]):  # one shape, different amounts of padding
        out = _run(model, pad_graph(batch([graphs[k] for k in order]), *shape))
        node0 = 0
        for slot, k in enumerate(order):
            n = int(graphs[k].n_node[0])
            np.testing.assert_allclose(out["energy"][slot], alone[k]["energy"][0], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(out["forces"][node0:node0 + n], alone[k]["forces"][:n], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(out["energies"][node0:node0 + n], alone[k]["energies"][:n], rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(out["stress"][slot], alone[k]["stress"][0], rtol=1e-10, atol=1e-12)
            node0 += n
        assert np.all(out["forces"][node0:] == 0.0) and np.all(out["energies"][node0:] == 0.0)
        assert np.all(out["energy"][len(order):] == 0.0) and np.all(out["stress"][len(order):] == 0.0)


def test_pad_graph_masks_and_zero_padding_vectors(model):
    _, _, graphs = model
    b = batch(graphs[:3])
    n, e = int(b.n_node.sum()), int(b.n_edge.sum())
    p = pad_graph(b, n + 5, e + 10, 6)
    np.testing.assert_array_equal(jraph.get_node_padding_mask(p), np.arange(n + 5) < n)
    np.testing.assert_array_equal(jraph.get_edge_padding_mask(p), np.arange(e + 10) < e)
    np.testing.assert_array_equal(jraph.get_graph_padding_mask(p), np.arange(6) < 3)
    assert np.all(p.nodes[keys.NUMBERS][n:] == 0) and np.all(p.globals[keys.WEIGHT][3:] == 0)
    np.testing.assert_array_equal(p.globals[keys.CELL][3:], np.broadcast_to(np.eye(3), (3, 3, 3)))
    assert np.all(p.senders[e:] >= n) and np.all(p.receivers[e:] >= n)  # padding edges touch padding nodes
    vec = np.asarray(jax.jit(edge_vectors)(p.nodes[keys.POSITIONS], p.globals[keys.CELL], p))
    assert np.all(vec[e:] == 0.0)
    graph_of_edge = np.repeat(np.arange(3), b.n_edge)
    pos, cell = b.nodes[keys.POSITIONS], b.globals[keys.CELL]
    expected = pos[b.senders] - pos[b.receivers] + np.einsum("ei,eij->ej", b.edges[keys.SHIFTS], cell[graph_of_edge])
    np.testing.assert_allclose(vec[:e], expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="padding needs one more graph and node"):
        pad_graph(b, n, e, 6)
    with pytest.raises(ValueError, match="cannot pad"):
        pad_graph(b, n + 1, e - 1, 6)


def test_ladder_and_pad_to_bucket():
    nodes = [ladder_size(x, 8, 64) for x in range(1, 20001)]
    edges = [ladder_size(x, 64, 1024) for x in range(1, 200001, 7)]
    assert all(a <= b for a, b in zip(nodes, nodes[1:])) and all(v % 8 == 0 for v in nodes)
    assert all(v % 64 == 0 for v in edges)
    assert all(v >= x for x, v in enumerate(nodes, 1)) and all(v >= x for x, v in zip(range(1, 200001, 7), edges))
    assert all(v <= 1.25 * x + 8 for x, v in enumerate(nodes, 1) if x > 64)
    assert len(set(nodes)) < 8 + 40 and len(set(edges)) < 16 + 40  # a few dozen shapes up to 2·10⁴ atoms
    # an MD run whose edge count drifts by ±10 % revisits at most two edge shapes
    assert len({ladder_size(x, 64, 1024) for x in range(27000, 33000)}) <= 2

    rng = np.random.default_rng(1)
    for n in (1, 5, 40, 300):
        g = atoms_to_graph(Atoms(f"Cu{n}", positions=rng.uniform(0, n ** (1 / 3) * 2.2, (n, 3))), CUTOFF)
        p = pad_to_bucket(g)
        assert p.nodes[keys.POSITIONS].shape[0] > n and p.senders.shape[0] >= g.n_edge[0]
        assert p.n_node.shape[0] == 2 and int(p.n_node[0]) == n
    two = pad_to_bucket(batch([g, g, g]))
    assert two.n_node.shape[0] == 4 and jraph.get_graph_padding_mask(two).sum() == 3


def test_to_device_casts_only_floats(model):
    _, _, graphs = model
    p = pad_to_bucket(batch(graphs))
    d = to_device(p, jnp.float32)
    assert d.nodes[keys.POSITIONS].dtype == jnp.float32 and d.globals[keys.CELL].dtype == jnp.float32
    assert d.senders.dtype == jnp.int32 and d.nodes[keys.NUMBERS].dtype == jnp.int32
    assert d.globals[keys.PBC].dtype == jnp.bool_ and isinstance(d.senders, jax.Array)
    np.testing.assert_allclose(np.asarray(d.nodes[keys.POSITIONS]), p.nodes[keys.POSITIONS], rtol=1e-6)


# ---- loader -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset():
    """Labelled random molecules of 2..24 atoms; the energy label is the structure's index."""
    rng = np.random.default_rng(7)
    graphs = []
    for k in range(60):
        n = int(rng.integers(2, 25))
        atoms = Atoms(f"Cu{n}", positions=rng.uniform(0, 1.6 * n ** (1 / 3), (n, 3)))
        atoms.calc = SinglePointCalculator(atoms, energy=float(k), forces=np.zeros((n, 3)))
        graphs.append(atoms_to_graph(atoms, CUTOFF))
    return graphs


def _ids(padded):
    mask = jraph.get_graph_padding_mask(padded)
    return [int(e) for e in padded.globals[keys.ENERGY][mask]]


def test_loader_epochs_budgets_and_shapes(dataset):
    n_node = np.array([int(g.n_node[0]) for g in dataset])
    n_edge = np.array([int(g.n_edge[0]) for g in dataset])
    kw = dict(batch_size=6, max_nodes=90, max_edges=int(n_edge.max()) * 3, seed=3)
    loader = GraphLoader(dataset, **kw)
    assert 1 <= len(loader.shapes) <= 4
    orders = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader)
        ids = [_ids(b) for b in batches]
        assert [list(map(int, p)) for p in loader.plan()] == ids
        flat = [k for b in ids for k in b]
        assert sorted(flat) == list(range(len(dataset)))  # every structure once per epoch
        for b, idx in zip(batches, ids):
            shape = (b.nodes[keys.POSITIONS].shape[0], b.senders.shape[0], b.n_node.shape[0])
            assert shape in loader.shapes
            assert len(idx) <= 6 and n_node[idx].sum() <= 90 and n_edge[idx].sum() <= kw["max_edges"]
            np.testing.assert_array_equal(  # real part is exactly the batch of those graphs
                b.nodes[keys.POSITIONS][: n_node[idx].sum()], batch([dataset[k] for k in idx]).nodes[keys.POSITIONS])
        orders.append(flat)
    assert orders[0] != orders[1]
    resumed = GraphLoader(dataset, **kw)  # a resumed run: fresh loader, same seed and epoch
    resumed.set_epoch(2)
    assert [k for b in resumed for k in _ids(b)] == orders[2]
    other_seed = GraphLoader(dataset, **{**kw, "seed": 4})
    assert [k for b in other_seed for k in _ids(b)] != orders[0]
    in_order = GraphLoader(dataset, batch_size=7, shuffle=False, prefetch=0)
    in_order.set_epoch(5)
    assert [k for b in in_order for k in _ids(b)] == list(range(len(dataset)))


def test_buckets_cover_any_epoch_and_overflow_is_an_error(dataset):
    n_node = [int(g.n_node[0]) for g in dataset]
    n_edge = [int(g.n_edge[0]) for g in dataset]
    buckets = Buckets.from_sizes(n_node, n_edge, batch_size=5, seed=0)
    assert 1 <= len(buckets.shapes) <= 4
    for epoch in range(20, 40):  # epochs never sampled while choosing the buckets
        for b in plan_batches(n_node, n_edge, batch_size=5, seed=0, epoch=epoch):
            buckets.fit(sum(n_node[k] for k in b), sum(n_edge[k] for k in b), len(b))
    worst = buckets.shapes[-1]
    with pytest.raises(ValueError, match="fits no padding bucket"):
        buckets.fit(worst[0] - 1, worst[1] + 1, 1)  # edges beyond every bucket: never truncated
    with pytest.raises(ValueError, match=r"structure \d+ has \d+ edges, more than the per-batch budget max_edges=10"):
        GraphLoader(dataset, batch_size=4, max_edges=10)
    small = GraphLoader(dataset[:5], batch_size=5, buckets=Buckets(((16, 64, 6),)), shuffle=False)
    with pytest.raises(ValueError, match=r"batch of structures \[0, 1, 2, 3, 4\]: .* fits no padding bucket"):
        list(small)


@pytest.mark.timeout(30)
def test_prefetch_thread_errors_propagate_and_early_exit_stops_it(dataset, monkeypatch):
    loader = GraphLoader(dataset, batch_size=4, prefetch=2)
    calls = []

    def failing(indices):
        calls.append(len(indices))
        if len(calls) == 3:
            raise RuntimeError("boom in batch 3")
        return GraphLoader._make(loader, indices)

    monkeypatch.setattr(loader, "_make", failing)
    got = []
    with pytest.raises(RuntimeError, match="boom in batch 3"):
        for b in loader:
            got.append(b)
    assert len(got) == 2

    monkeypatch.undo()
    before = {t.ident for t in threading.enumerate()}
    it = iter(loader)
    next(it)
    it.close()  # consumer walks away after one batch
    time.sleep(0.3)
    assert not any(t.name == "nnpes-GraphLoader" and t.ident not in before and t.is_alive() for t in threading.enumerate())
