"""Data-parallel training and sharded committees (``nnpes.training.parallel``).

The multi-device checks run in a child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set before JAX starts;
this pytest process already has one CPU device): ``python tests/test_parallel.py worker OUT.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _toy_model  # noqa: E402,F401  (registers "_toy")

from nnpes import keys  # noqa: E402

MODEL = {"name": "_toy", "elements": ["Cu", "Al"], "cutoff": 3.0, "dtype": "float64"}


def _structures(n: int, seed: int = 0):
    """EMT-labelled Cu/Al cells of 4, 8 and 12 atoms, so batches split unevenly."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1 + k % 3, 1, 1))
        atoms.rattle(0.08, seed=int(rng.integers(1 << 30)))
        if k % 4 == 1:
            atoms.symbols[0] = "Al"
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        out.append(atoms)
    return out


def _graphs(n: int, seed: int = 0):
    from nnpes.graph import atoms_to_graph

    return [atoms_to_graph(a, MODEL["cutoff"]) for a in _structures(n, seed)]


# ---- one device (this process) ------------------------------------------------------------------


def test_split_batch_pads_never_drops():
    from nnpes.batching import batch, pad_graph
    from nnpes.training.parallel import split_batch, unpad

    graphs = _graphs(5)
    energies = sorted(float(g.globals[keys.ENERGY][0]) for g in graphs)
    total_nodes = sum(int(g.n_node[0]) for g in graphs)
    # a padded batch as a loader yields it (two empty trailing padding graphs as well)
    padded = pad_graph(batch(graphs), total_nodes + 7, sum(int(g.n_edge[0]) for g in graphs) + 11, 8)
    for n_shards in (1, 2, 4, 7):  # 7 > 5 structures: two sub-batches hold only padding
        stacked = split_batch(padded, n_shards)
        assert stacked.n_node.shape[0] == n_shards
        seen = []
        for d in range(n_shards):
            sub = jax.tree_util.tree_map(lambda x: x[d], stacked)
            real = unpad(sub)
            seen += [float(g.globals[keys.ENERGY][0]) for g in real]
            # padding carries zero weight, so it adds nothing to the loss
            n_real = len(real)
            assert np.all(sub.globals[keys.WEIGHT][n_real:] == 0)
        assert sorted(seen) == energies, f"{n_shards} shards: structures lost or duplicated"
        assert int(np.sum(stacked.n_node[:, :-1][stacked.globals[keys.WEIGHT][:, :-1] > 0])) == total_nodes


def test_split_batch_balances_and_checks_shape():
    from nnpes.training.parallel import split_batch

    graphs = _graphs(6)  # 4, 8, 12, 4, 8, 12 atoms
    stacked = split_batch(graphs, 2)
    real_nodes = [int(np.sum(stacked.n_node[d][stacked.globals[keys.WEIGHT][d] > 0])) for d in range(2)]
    assert real_nodes == [24, 24]
    with pytest.raises(ValueError, match="needs at least"):
        split_batch(graphs, 2, shape=(10, 10, 2))
    with pytest.raises(ValueError, match="no structures"):
        split_batch([], 2)


def test_one_shard_loss_and_grads_equal_plain_step():
    """D = 1: the stacked loss (and its gradient) is the plain ``total_loss`` of the batch."""
    from nnpes.batching import batch, pad_graph
    from nnpes.potential import build_potential
    from nnpes.training.loss import total_loss
    from nnpes.training.parallel import make_mesh, shard_batch, stacked_loss_and_pred

    structures = _structures(5)
    pot = build_potential(MODEL, seed=1, dataset=structures)
    graphs = _graphs(5)
    w = {"energy": 1.0, "forces": 10.0, "stress": 0.0}
    plain_graph = pad_graph(batch(graphs), 48, 2048, 8)
    plain_graph = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else jnp.asarray(x),
        plain_graph)
    mesh = make_mesh(1)
    stacked = shard_batch(graphs, mesh, jnp.float64)
    rest = {k: v for k, v in pot.params.items() if k != "params"}

    def plain(p):
        return total_loss(pot.energy_forces_stress({**rest, "params": p}, plain_graph, False), plain_graph, w)

    def sharded(p):
        return stacked_loss_and_pred(lambda q, g: pot.energy_forces_stress({**rest, "params": q}, g, False), p, stacked, w)[0]

    def on_mesh(p):  # the shard_map path
        return stacked_loss_and_pred(lambda q, g: pot.energy_forces_stress({**rest, "params": q}, g, False), p, stacked,
                                     w, mesh=mesh)[0]

    l0, g0 = jax.jit(jax.value_and_grad(plain))(pot.params["params"])
    assert float(l0) > 0
    for fn in (sharded, on_mesh):
        l1, g1 = jax.jit(jax.value_and_grad(fn))(pot.params["params"])
        np.testing.assert_allclose(float(l1), float(l0), rtol=1e-12)
        for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-14)


def test_mesh_and_member_errors():
    from nnpes.training.parallel import make_mesh, shard_members

    assert make_mesh().size == jax.device_count()
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        make_mesh(jax.device_count() + 1)
    mesh = make_mesh(1)
    stacked = {"w": jnp.ones((3, 2))}
    out = shard_members(stacked, mesh)  # any K divides over one device
    np.testing.assert_array_equal(np.asarray(out["w"]), np.ones((3, 2)))


# ---- four forced CPU devices (child process) ---------------------------------------------------


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "result.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__, "worker", str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_four_device_run_matches_one_device(four_devices):
    r = four_devices
    assert r["device_count"] == 4
    assert r["batch_spec"] == ["data"] and r["batch_shard_rows"] == 1  # one sub-batch per device
    assert r["params_replicated"]
    plain, one, four = (np.asarray(r["losses"][k]) for k in ("plain", "mesh1", "mesh4"))
    assert plain.shape == (r["n_steps"],)
    # it trained: the parameters moved
    assert np.max(np.abs(np.subtract(r["params"]["plain"], r["params"]["initial"]))) > 1e-2
    np.testing.assert_allclose(one, plain, rtol=1e-12)
    np.testing.assert_allclose(four, plain, rtol=1e-9)
    np.testing.assert_allclose(r["params"]["mesh4"], r["params"]["plain"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(r["params"]["mesh1"], r["params"]["plain"], rtol=1e-12, atol=1e-14)
    # the last batch (2 structures over 4 devices) was padded, not dropped
    assert r["structures_seen"] == r["structures_expected"]


def test_sharded_committee_matches(four_devices):
    r = four_devices["committee"]
    assert r["spec"] == ["data"] and r["members_per_device"] == 1
    np.testing.assert_allclose(r["sharded_energy"], r["energy"], rtol=1e-12)
    np.testing.assert_allclose(r["sharded_max_force_std"], r["max_force_std"], rtol=1e-10)
    np.testing.assert_allclose(r["sharded_forces"], r["forces"], rtol=1e-10, atol=1e-13)


# ---- the child process --------------------------------------------------------------------------


def _worker(out_path: str) -> None:
    import optax

    jax.config.update("jax_enable_x64", True)
    from nnpes.active.ensemble import Ensemble
    from nnpes.batching import batch, pad_graph
    from nnpes.potential import build_potential
    from nnpes.training.loss import total_loss
    from nnpes.training.parallel import (
        data_parallel_step, make_mesh, real_graphs, replicate, shard_batch, shard_members, stacked_loss_and_pred,
        sub_batch_shape,
    )

    assert jax.device_count() == 4, jax.devices()
    structures = _structures(10)
    graphs = _graphs(10)
    pot = build_potential(MODEL, seed=0, dataset=structures)
    rest = {k: v for k, v in pot.params.items() if k != "params"}
    tx = optax.adam(2e-2)
    w = {"energy": jnp.float64(1.0), "forces": jnp.float64(10.0), "stress": jnp.float64(0.0)}
    batch_size, epochs = 4, 3
    shape = (sum(sorted(int(g.n_node[0]) for g in graphs)[-batch_size:]) + 1,
             sum(sorted(int(g.n_edge[0]) for g in graphs)[-batch_size:]), batch_size + 1)

    def batches(epoch):
        order = np.random.default_rng([0, epoch]).permutation(len(graphs))
        for i in range(0, len(order), batch_size):
            yield [graphs[j] for j in order[i:i + batch_size]]

    def update(params, opt_state, loss_fn):
        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    @jax.jit
    def plain_step(params, opt_state, graph, weights):
        return update(params, opt_state, lambda p: total_loss(
            pot.energy_forces_stress({**rest, "params": p}, graph, False), graph, weights))

    def dp_step(params, opt_state, graphs, weights):
        return update(params, opt_state, lambda p: stacked_loss_and_pred(
            lambda q, g: pot.energy_forces_stress({**rest, "params": q}, g, False), p, graphs, weights, mesh=mesh)[0])

    def to_dev(g):
        return jax.tree_util.tree_map(
            lambda x: jnp.asarray(x, jnp.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else jnp.asarray(x), g)

    result = {"device_count": jax.device_count(), "losses": {}, "params": {}}
    result["params"]["initial"] = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(pot.params["params"])]).tolist()
    for name in ("plain", "mesh1", "mesh4"):
        params = pot.params["params"]
        opt_state = tx.init(params)
        losses, seen = [], 0
        if name != "plain":
            mesh = make_mesh(int(name[-1]))
            sub_shape = sub_batch_shape(graphs, batch_size, mesh.size)  # one shape: one compile
            step = data_parallel_step(dp_step, mesh, batch_argnums=(2,))
            params, opt_state = replicate((params, opt_state), mesh)
        for epoch in range(epochs):
            for chunk in batches(epoch):
                if name == "plain":
                    params, opt_state, loss = plain_step(params, opt_state, to_dev(pad_graph(batch(chunk), *shape)), w)
                else:
                    stacked = shard_batch(chunk, mesh, jnp.float64, shape=sub_shape)
                    seen += real_graphs(stacked)
                    if name == "mesh4" and not losses:
                        leaf = stacked.nodes[keys.POSITIONS]
                        result["batch_spec"] = list(leaf.sharding.spec)
                        result["batch_shard_rows"] = int(leaf.addressable_shards[0].data.shape[0])
                    params, opt_state, loss = step(params, opt_state, stacked, w)
                losses.append(float(loss))
        if name == "mesh4":
            result["params_replicated"] = all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(params))
            result["structures_seen"], result["structures_expected"] = seen, epochs * len(graphs)
        result["losses"][name] = losses
        result["params"][name] = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)]).tolist()
    result["n_steps"], result["epochs"] = len(result["losses"]["plain"]), epochs

    # committee of 4 members, one per device
    ens = Ensemble.build(MODEL, 4, seed=3, dataset=structures)
    ref = ens.predict(structures[:5])
    sharded_vars = shard_members(ens.variables, make_mesh(4))
    leaf = jax.tree_util.tree_leaves(sharded_vars)[0]
    got = ens.replace(sharded_vars).predict(structures[:5])
    result["committee"] = {
        "spec": list(leaf.sharding.spec), "members_per_device": int(leaf.addressable_shards[0].data.shape[0]),
        "energy": [p["energy"] for p in ref], "sharded_energy": [p["energy"] for p in got],
        "max_force_std": [p["max_force_std"] for p in ref], "sharded_max_force_std": [p["max_force_std"] for p in got],
        "forces": np.concatenate([p["forces"].ravel() for p in ref]).tolist(),
        "sharded_forces": np.concatenate([p["forces"].ravel() for p in got]).tolist(),
    }
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    _worker(sys.argv[2])
