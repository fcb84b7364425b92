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
    from nnpes.graph import batch, pad_graph
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
    from nnpes.graph import batch, pad_graph
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


def test_training_options():
    from nnpes.config import load_config
    from nnpes.config.schema import ConfigError
    from nnpes.training.parallel import training_mesh, with_matmul_precision

    assert training_mesh(1) is None  # the plain single-device step
    assert training_mesh("all").size == jax.device_count()
    with pytest.raises(ValueError, match="devices"):
        training_mesh(0)
    base = {"data": {"train": "x.extxyz"}, "model": MODEL}
    assert load_config(base).training.devices == 1
    assert load_config({**base, "training": {"devices": "all"}}).training.devices == "all"
    for bad in (0, "two"):
        with pytest.raises(ConfigError, match="devices"):
            load_config({**base, "training": {"devices": bad}})
    with pytest.raises(ConfigError, match="matmul_precision"):
        load_config({**base, "training": {"matmul_precision": "hihgest"}})
    current = lambda: jax.config.jax_default_matmul_precision  # noqa: E731
    assert with_matmul_precision(current, "highest")() == "highest"
    assert with_matmul_precision(current, "default") is current


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
    """``nnpes.training.train`` with ``training.devices: 4`` against ``devices: 1`` (the plain step)
    on the same data and seed: the same loss curve and final parameters within float tolerance.
    10 training structures in batches of 4: the last batch (2 structures over 4 devices) is padded,
    so had it been dropped the losses would differ."""
    r = four_devices
    assert r["device_count"] == 4
    assert r["batch_spec"] == ["data"] and r["batch_shard_rows"] == 1  # one sub-batch per device
    assert r["params_replicated"]
    assert "data parallel over 4 devices" in r["log4"] and "data parallel" not in r["log1"]
    one, four = r["runs"]["1"], r["runs"]["4"]
    assert len(one["train_loss"]) == r["epochs"]
    for key in ("train_loss", "valid_loss", "valid_f_mae_meV_A"):
        np.testing.assert_allclose(four[key], one[key], rtol=1e-9, err_msg=key)
    # it trained (the loss moved between epochs), and the parameters agree
    assert abs(one["train_loss"][-1] - one["train_loss"][0]) > 1e-6 * abs(one["train_loss"][0])
    np.testing.assert_allclose(four["params"], one["params"], rtol=1e-8, atol=1e-12)
    # one fixed sub-batch shape on the mesh: one compile (the 1-device loader pads to its buckets)
    assert four["n_compiles"]["train"] == 1 and one["n_compiles"]["train"] >= 1


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def test_two_processes_match_one(four_devices, tmp_path):
    """Multi-process: two processes with two CPU devices each, joined through jax.distributed
    (the README's NNPES_COORDINATOR environment), train on a 4-device global mesh and end where the
    single-process 4-device run ends."""
    port = _free_port()
    procs = []
    for pid in (0, 1):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                   NNPES_COORDINATOR=f"localhost:{port}", NNPES_NUM_PROCESSES="2", NNPES_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, __file__, "multihost", four_devices["data"],
                                       str(tmp_path / f"p{pid}.json")], env=env, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-4000:]
    want = four_devices["runs"]["4"]
    for pid in (0, 1):
        got = json.loads((tmp_path / f"p{pid}.json").read_text())
        assert got["process_count"] == 2 and got["device_count"] == 4
        np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-9)
        np.testing.assert_allclose(got["params"], want["params"], rtol=1e-8, atol=1e-12)


def test_sharded_committee_matches(four_devices):
    r = four_devices["committee"]
    assert r["spec"] == ["data"] and r["members_per_device"] == 1
    np.testing.assert_allclose(r["sharded_energy"], r["energy"], rtol=1e-12)
    np.testing.assert_allclose(r["sharded_max_force_std"], r["max_force_std"], rtol=1e-10)
    np.testing.assert_allclose(r["sharded_forces"], r["forces"], rtol=1e-10, atol=1e-13)


# ---- the child process --------------------------------------------------------------------------


def _train_run(data, run_dir, devices, epochs: int, precision: str = "default") -> dict:
    """``nnpes.training.train`` on the test data; loss curve, final (EMA) parameters, compiles."""
    import csv

    from nnpes.potential import load_potential
    from nnpes.training import train

    config = {
        "data": {"train": str(data), "n_valid": 2},
        "model": MODEL,
        "training": {"seed": 0, "max_epochs": epochs, "batch_size": 4, "lr": 1e-2, "schedule": "constant",
                     "ema_decay": 0.5, "progress": False, "devices": devices, "matmul_precision": precision},
        "output": {"plots": False},
    }
    res = train(config, run_dir, quiet=True)
    rows = list(csv.DictReader(open(Path(run_dir) / "metrics.csv")))
    pot = load_potential(res.model)
    run = {k: [float(r[k]) for r in rows] for k in ("train_loss", "valid_loss", "valid_f_mae_meV_A")}
    run["params"] = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(pot.params["params"])]).tolist()
    run["n_compiles"] = res.n_compiles
    run["process_count"], run["device_count"] = jax.process_count(), jax.device_count()
    return run


def _multihost_worker(data: str, out_path: str) -> None:
    """One of two processes (2 CPU devices each) joined by jax.distributed through the
    NNPES_COORDINATOR / NNPES_NUM_PROCESSES / NNPES_PROCESS_ID environment, as the README says."""
    jax.config.update("jax_enable_x64", True)
    run = _train_run(data, Path(out_path).parent / f"run_p{os.environ['NNPES_PROCESS_ID']}", "all", EPOCHS)
    Path(out_path).write_text(json.dumps(run))


EPOCHS = 3


def _worker(out_path: str) -> None:
    jax.config.update("jax_enable_x64", True)
    from ase.io import write

    from nnpes.active.ensemble import Ensemble
    from nnpes.training.parallel import make_mesh, replicate, shard_batch, shard_members

    assert jax.device_count() == 4, jax.devices()

    structures = _structures(12)
    graphs = _graphs(12)
    tmp = Path(out_path).parent
    write(tmp / "train.extxyz", structures)
    epochs = EPOCHS
    result = {"device_count": jax.device_count(), "runs": {}, "epochs": epochs}

    # placement: one sub-batch per device, parameters on every device
    mesh = make_mesh(4)
    leaf = shard_batch(graphs[:6], mesh, jnp.float64).nodes[keys.POSITIONS]
    result["batch_spec"] = list(leaf.sharding.spec)
    result["batch_shard_rows"] = int(leaf.addressable_shards[0].data.shape[0])
    result["params_replicated"] = all(
        x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(replicate({"a": np.ones(3)}, mesh)))

    for devices in (1, 4):
        run_dir = tmp / f"run{devices}"
        # the 4-device run also asks for full-precision matmuls: a no-op on CPU, so still equal
        precision = "highest" if devices == 4 else "default"
        result["runs"][str(devices)] = _train_run(tmp / "train.extxyz", run_dir, devices, epochs, precision)
        result[f"log{devices}"] = (run_dir / "train.log").read_text()
    result["data"] = str(tmp / "train.extxyz")

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
if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "multihost":
    _multihost_worker(sys.argv[2], sys.argv[3])
