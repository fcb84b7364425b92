"""Training: loss masking, optimiser mask, checkpoints, stop/resume equality, kill -9 recovery,
bad data, evaluation output. Uses a tiny private model ("_tiny_mlp") and EMT-labelled copper so the
whole file compiles only a handful of small functions.

Run as a script (``python tests/test_training.py train CFG ...``) it is the ``nnpes`` command with
the private model registered: the kill -9 test trains in such a child process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from nnpes import keys
from nnpes.models import MODELS, register


@dataclass
class TinyHParams:
    features: int = 8


class TinyMLP(nn.Module):
    """E_i = MLP(Σ_j φ(r_ij)) with a smooth radial basis: weights (2-D) and biases (1-D)."""

    cutoff: float
    features: int

    @nn.compact
    def __call__(self, vectors, species, senders, receivers, edge_mask, node_mask):
        sq = jnp.sum(vectors * vectors, -1)
        r = jnp.sqrt(jnp.where(edge_mask, sq, 1.0))
        centers = jnp.linspace(0.5, self.cutoff, 4, dtype=vectors.dtype)
        env = jnp.where(edge_mask, (1.0 - jnp.minimum(r / self.cutoff, 1.0) ** 2) ** 2, 0.0)
        basis = jnp.exp(-4.0 * (r[:, None] - centers) ** 2) * env[:, None]
        x = jax.ops.segment_sum(basis, receivers, species.shape[0], indices_are_sorted=True)
        x = jnp.concatenate([x, jax.nn.one_hot(species, 2, dtype=x.dtype)], -1)
        h = nn.silu(nn.Dense(self.features, param_dtype=x.dtype, dtype=x.dtype)(x))
        e = nn.Dense(1, param_dtype=x.dtype, dtype=x.dtype)(h)[:, 0]
        return jnp.where(node_mask, e, 0.0)


if "_tiny_mlp" not in MODELS:

    @register("_tiny_mlp", TinyHParams)
    def _build(hp, cfg):
        return TinyMLP(cutoff=cfg.cutoff, features=hp.features)


if __name__ == "__main__":  # the nnpes command with the private model (kill -9 test)
    from nnpes.cli.main import main

    sys.exit(main(sys.argv[1:]))


# ---- data and configs ------------------------------------------------------------------------


def _copper(n: int, seed: int, symbols=None):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        atoms.set_cell(atoms.cell * (1 + 0.02 * rng.standard_normal()), scale_atoms=True)
        if symbols:
            atoms.symbols[0] = symbols
        atoms.calc = EMT()
        e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from ase.io import write

    d = tmp_path_factory.mktemp("data")
    write(d / "cu.extxyz", _copper(24, 0))
    write(d / "cu_test.extxyz", _copper(6, 1))
    write(d / "cual.extxyz", _copper(3, 2, symbols="Al"))
    return d


def _config(data_dir, **training):
    t = dict(seed=0, max_epochs=4, batch_size=4, lr=5e-3, schedule="exponential", decay_rate=0.9,
             warmup_epochs=1.0, stress_weight=1.0, ema_decay=0.9, progress=False)
    t.update(training)
    return {
        "data": {"train": str(data_dir / "cu.extxyz"), "test": str(data_dir / "cu_test.extxyz"), "n_valid": 4},
        "model": {"name": "_tiny_mlp", "elements": ["Cu", "Al"], "cutoff": 3.0, "features": 8, "dtype": "float64"},
        "training": t,
        "output": {"plots": True},
    }


# ---- loss ------------------------------------------------------------------------------------


def _labelled_graphs():
    from nnpes.graph import atoms_to_graph

    return [atoms_to_graph(a, 3.0) for a in _copper(3, 5)]


def test_loss_matches_formula_and_ignores_padding():
    from nnpes.graph import batch, pad_graph
    from nnpes.training.loss import total_loss

    graphs = _labelled_graphs()
    b = batch(graphs)
    rng = np.random.default_rng(0)
    n_real = int(b.n_node.sum())
    pred_e = b.globals[keys.ENERGY] + rng.normal(size=3)
    pred_f = b.nodes[keys.FORCES] + rng.normal(size=(n_real, 3))
    pred_s = b.globals[keys.STRESS] + 0.01 * rng.normal(size=(3, 3, 3))
    w = {"energy": 2.0, "forces": 3.0, "stress": 5.0}

    # the formula, by hand, per structure
    want = 0.0
    node0 = 0
    for k, g in enumerate(graphs):
        n = int(g.n_node[0])
        want += w["energy"] * ((pred_e[k] - g.globals[keys.ENERGY][0]) / n) ** 2
        want += w["forces"] / (3 * n) * np.sum((pred_f[node0:node0 + n] - g.nodes[keys.FORCES]) ** 2)
        want += w["stress"] / 9 * np.sum((pred_s[k] - g.globals[keys.STRESS][0]) ** 2)
        node0 += n
    want /= 3

    for n_node, n_edge, n_graph in [(n_real + 1, int(b.n_edge.sum()), 4), (n_real + 7, int(b.n_edge.sum()) + 9, 6)]:
        p = pad_graph(b, n_node, n_edge, n_graph)
        pn, pg = n_node - n_real, n_graph - 3
        # garbage on padding: must not matter
        pred = {
            "energy": jnp.asarray(np.concatenate([pred_e, 1e3 * np.ones(pg)])),
            "forces": jnp.asarray(np.concatenate([pred_f, 1e3 * np.ones((pn, 3))])),
            "stress": jnp.asarray(np.concatenate([pred_s, 1e3 * np.ones((pg, 3, 3))])),
        }
        got = float(jax.jit(total_loss)(pred, jax.tree_util.tree_map(jnp.asarray, p), w))
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_loss_masks_missing_labels_and_huber():
    from nnpes.graph import batch, pad_graph
    from nnpes.training.loss import total_loss

    graphs = _labelled_graphs()
    graphs[1].globals[keys.HAS_FORCES][:] = 0.0
    graphs[1].globals[keys.HAS_ENERGY][:] = 0.0
    b = batch(graphs)
    p = jax.tree_util.tree_map(jnp.asarray, pad_graph(b, int(b.n_node.sum()) + 1, int(b.n_edge.sum()), 4))
    n1 = int(graphs[0].n_node[0])
    n2 = int(graphs[1].n_node[0])
    base = {"energy": p.globals[keys.ENERGY], "forces": p.nodes[keys.FORCES], "stress": p.globals[keys.STRESS]}
    w = {"energy": 1.0, "forces": 1.0, "stress": 0.0}
    mse_loss = jax.jit(total_loss)
    huber_loss = jax.jit(lambda pred, g, w: total_loss(pred, g, w, kind="huber", delta=0.1))
    assert float(mse_loss(base, p, w)) == 0.0
    bad = dict(base, energy=base["energy"].at[1].add(5.0), forces=base["forces"].at[n1:n1 + n2].add(5.0))
    assert float(mse_loss(bad, p, w)) == 0.0  # structure 1 has no labels
    worse = dict(base, forces=base["forces"].at[0].add(1.0))
    mse = float(mse_loss(worse, p, w))
    hub = float(huber_loss(worse, p, w))
    assert 0.0 < hub < mse  # Huber grows linearly beyond delta


def test_decay_mask_only_weight_matrices():
    from nnpes.training.optim import decay_mask

    params = {"e0": jnp.ones(2), "scale": jnp.ones(2), "offset": jnp.ones(()),
              "inner": {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}}
    m = decay_mask(params)
    assert m["inner"]["Dense_0"]["kernel"] is True
    assert not any([m["e0"], m["scale"], m["offset"], m["inner"]["Dense_0"]["bias"]])


def test_checkpoint_roundtrip_and_garbage(tmp_path):
    import optax

    from nnpes.training.checkpoint import load_checkpoint, save_checkpoint

    params = {"a": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2))}}
    tx = optax.adam(1e-3)
    state = {"params": params, "opt": tx.init(params), "epoch": np.int64(7)}
    state["opt"] = tx.update(params, state["opt"], params)[1]
    save_checkpoint(tmp_path / "x.ckpt", state)
    assert not (tmp_path / "x.ckpt.tmp").exists()
    back = load_checkpoint(tmp_path / "x.ckpt", jax.tree_util.tree_map(jnp.zeros_like, state))
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (tmp_path / "bad.ckpt").write_bytes(b"\x93garbage")
    with pytest.raises(ValueError, match="bad.ckpt"):
        load_checkpoint(tmp_path / "bad.ckpt", state)


def test_train_step_and_old_dict_checkpoints_load_into_train_state(tmp_path):
    """``make_train_step`` (the public step): pure, jittable, counts steps, reports lr; a checkpoint
    in the dict layout of the trainer before ``TrainState`` loads through ``load_run``."""
    from nnpes.config import TrainingConfig
    from nnpes.graph import batch, pad_graph, to_device
    from nnpes.potential import build_potential
    from nnpes.training import LossOptions, TrainState, lr_schedule, make_optimizer, make_train_step
    from nnpes.training.checkpoint import save_checkpoint
    from nnpes.training.run_state import Progress, load_run, save_run

    pot = build_potential({"name": "_tiny_mlp", "elements": ["Cu", "Au"], "cutoff": 3.0, "dtype": "float64"},
                          dataset=_copper(3, 5))
    tcfg = TrainingConfig(lr=1e-2, schedule="cosine", max_epochs=4, ema_decay=0.9)
    tx = make_optimizer(tcfg, 1)
    train_step, eval_step = make_train_step(lambda v, g: pot.energy_forces_stress(v, g, False), tx, LossOptions.of(tcfg),
                                            schedule=lr_schedule(tcfg, 1), ema_decay=tcfg.ema_decay)
    graph = to_device(pad_graph(batch(_labelled_graphs()), 32, 512, 4), pot.dtype)
    w = {"energy": 1.0, "forces": 100.0, "stress": 0.0}
    state0 = TrainState.create(pot.params, tx)
    state, m1 = jax.jit(train_step)(state0, graph, w, jnp.asarray(0.5))
    state, m2 = jax.jit(train_step)(state, graph, w, jnp.asarray(0.5))
    assert int(state.step) == 2 and float(m2.loss) < float(m1.loss)
    assert float(m1.lr) == pytest.approx(0.5 * float(lr_schedule(tcfg, 1)(0)))
    assert float(jax.jit(eval_step)(state, graph, w).loss) > 0

    old = {"variables": state.variables, "opt_state": state.opt_state, "ema": state.ema, "step": np.int64(2),
           "epoch": np.int64(3), "best_loss": np.float64(0.25), "best_epoch": np.int64(1), "lr_scale": np.float64(0.5),
           "plateau_bad": np.int64(1), "stop_bad": np.int64(2), "elapsed": np.float64(12.5)}
    save_checkpoint(tmp_path / "old.ckpt", old)
    back, progress = load_run(tmp_path / "old.ckpt", state0)
    assert progress == Progress(3, 0.25, 1, 0.5, 1, 2, 12.5) and int(back.step) == 2
    for a, b in zip(jax.tree_util.tree_leaves(state.replace(ema_err=None)),
                    jax.tree_util.tree_leaves(back.replace(ema_err=None))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    zeros = jax.tree_util.tree_map(np.zeros_like, jax.device_get(state.ema))
    for x in jax.tree_util.tree_leaves(back.ema_err):  # saved before the EMA was compensated: nothing carried
        assert not np.any(np.asarray(x))
    save_run(tmp_path / "new.ckpt", back, progress)
    expected = {k: old[k] for k in ("variables", "opt_state", "ema")}
    expected.update({"ema_err": zeros}, **{k: v for k, v in old.items() if k not in expected})
    save_checkpoint(tmp_path / "expected.ckpt", {**expected, "batch": np.int64(0)})  # the fields added since
    assert (tmp_path / "new.ckpt").read_bytes() == (tmp_path / "expected.ckpt").read_bytes()


def test_ema_keeps_moving_where_float32_rounding_would_stop_it():
    """An E0-sized float32 parameter (−615.62 eV, ulp 6e-5) drifting 2e-5 per step: a plain EMA at
    decay 0.99 moves only when 0.01 × its lag passes half an ulp, so it lags by 3 meV instead of 2,
    a constant offset of the EMA model's energy. The compensated EMA follows the exact one."""
    from nnpes.training.optim import ema_update

    p = np.float32(-615.62) + np.float32(2e-5) * np.arange(1, 3001, dtype=np.float32)

    def run(carry, x):
        (ema, err), (pt, t) = carry, x
        return ema_update(ema, err, pt, 0.99, t), None

    (ema, err), _ = jax.jit(lambda: jax.lax.scan(run, (np.float32(-615.62), np.float32(0)),
                                                 (p, jnp.arange(3000, dtype=jnp.float32))))()
    exact = np.float64(-615.62)
    for t, pt in enumerate(p.astype(np.float64)):
        exact += (1 - min(0.99, (1 + t) / (10 + t))) * (pt - exact)
    ulp = float(np.spacing(np.float32(615.6)))  # 6.1e-5; the plain EMA was off by 1.07e-3
    assert abs(float(ema) - exact) < ulp and float(p[-1]) - exact == pytest.approx(2e-3, rel=0.05)


# ---- whole runs ------------------------------------------------------------------------------


def _model_leaves(run_dir):
    from nnpes.potential import load_potential

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(load_potential(Path(run_dir) / "model").params)]


@pytest.fixture(scope="module")
def killed_run(data_dir, tmp_path_factory):
    """A run killed with SIGKILL some time after its first checkpoint, then resumed for two more
    epochs. Returns (run_dir, epochs at the end, epoch of the checkpoint found after the kill)."""
    import yaml
    from flax import serialization

    from nnpes.training import train

    tmp = tmp_path_factory.mktemp("killed")
    run_dir = tmp / "run"
    cfg = _config(data_dir, max_epochs=400)  # exponential schedule: max_epochs does not change it
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, __file__, "train", str(tmp / "cfg.yaml"), "--run-dir", str(run_dir)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run_dir / "latest.ckpt"
    deadline = time.time() + 120
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if not latest.exists():
        proc.kill()
        pytest.fail(f"no checkpoint from the child run: {proc.stderr.read().decode()[-2000:]}")
    time.sleep(0.5)  # a few more epochs: the kill lands at an arbitrary point, often inside a save
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = int(serialization.msgpack_restore(latest.read_bytes())["epoch"])  # readable after the kill
    assert epoch >= 1
    result = train(str(tmp / "cfg.yaml"), run_dir, resume=True, quiet=True,
                   overrides=[f"training.max_epochs={epoch + 2}"])
    return run_dir, result, epoch


class FakeWandb(types.ModuleType):
    """A stand-in ``wandb`` module that records ``init``, ``log`` and ``finish``."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    def init(self, **kw):
        self.calls.append(("init", kw))
        fake = self

        class Run:
            id, name, url = "fake123", "fake-run", ""

            def log(self, data, step=None):
                fake.calls.append(("log", dict(data), step))

            def finish(self):
                fake.calls.append(("finish",))

        return Run()


@pytest.fixture(scope="module")
def fake_wandb():
    return FakeWandb()


@pytest.fixture(scope="module")
def full_run(data_dir, killed_run, fake_wandb, tmp_path_factory):
    """The same run never interrupted; it also logs to (a fake) W&B and, where tensorboardX is
    installed, to TensorBoard."""
    import importlib.util

    from nnpes.training import train

    run_dir = tmp_path_factory.mktemp("full")
    cfg = _config(data_dir, max_epochs=killed_run[1].epochs)
    cfg["output"].update(wandb={"project": "nnpes-tests", "mode": "offline"},
                         tensorboard=importlib.util.find_spec("tensorboardX") is not None)
    saved = sys.modules.get("wandb")
    sys.modules["wandb"] = fake_wandb
    try:
        result = train(cfg, run_dir, quiet=True)
    finally:
        if saved is None:
            sys.modules.pop("wandb")
        else:
            sys.modules["wandb"] = saved
    return run_dir, result


def test_run_outputs_and_learning(full_run):
    import csv

    run_dir, result = full_run
    for name in ("metrics.csv", "latest.ckpt", "best.ckpt", "learning_curve.png", "parity_test.png",
                 "test_metrics.json", "model/params.msgpack", "config.yaml", "train.log"):
        assert (run_dir / name).exists(), name
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(result.epochs))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert result.stop_reason == "max_epochs"
    # one padded shape each for train and valid: one compile each
    assert 1 <= result.n_compiles["train"] <= result.n_padded_shapes
    assert "compiles" in (run_dir / "train.log").read_text()
    m = result.test_metrics
    assert m["forces_meV_per_A"]["n"] == 6 * 4 * 3 and m["stress_meV_per_A3"]["n"] == 6 * 9
    assert set(m["forces_per_element_meV_per_A"]) == {"Cu"}


def test_run_result_is_typed_saved_and_keeps_dict_access(full_run):
    """``train`` returns a ``TrainResult``, saved as ``result.yaml`` (read back equal); the dict access
    of the summary dict it replaced still works, with a DeprecationWarning."""
    from nnpes.training.result import TrainResult

    run_dir, result = full_run
    assert isinstance(result, TrainResult) and TrainResult.load(run_dir) == result
    with pytest.warns(DeprecationWarning, match=r"use result\.model"):
        assert result["model"] == result.model == str(run_dir / "model")
    with pytest.raises(KeyError):
        result["no_such_key"]
    with pytest.warns(DeprecationWarning):
        assert result.get("epochs") == result.epochs and "epochs" in result and result.get("members") is None


def test_run_shows_stress_and_every_loss_term_and_explains_its_log(full_run):
    """A run trained with stress: stress MAE/RMSE (train and valid) and the loss terms in
    metrics.csv (old columns first, unchanged), stress in the epoch lines and the final table (meV/Å³
    and GPa), the column legend at the start and a stop line that counts epochs like the epoch lines."""
    import csv

    from nnpes.training.metrics import COLUMNS

    run_dir, result = full_run
    with open(run_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:14] == [  # the first format's columns, in their order
        "epoch", "step", "time_s", "lr", "train_loss", "valid_loss", "train_e_mae_meV_atom", "train_f_mae_meV_A",
        "train_f_rmse_meV_A", "valid_e_mae_meV_atom", "valid_e_rmse_meV_atom", "valid_f_mae_meV_A",
        "valid_f_rmse_meV_A", "valid_s_mae_meV_A3"]
    assert reader.fieldnames == COLUMNS
    for r in rows:
        for split in ("train", "valid"):
            s_mae, s_rmse = float(r[f"{split}_s_mae_meV_A3"]), float(r[f"{split}_s_rmse_meV_A3"])
            assert 0 < s_mae <= s_rmse
            terms = [float(r[f"{split}_loss_{k}"]) for k in ("energy", "forces", "stress")]
            assert min(terms) > 0 and sum(terms) == pytest.approx(float(r[f"{split}_loss"]), rel=1e-4)
    log = (run_dir / "train.log").read_text()
    assert "loss train / valid = w_E·L_E + w_F·L_F + w_S·L_S (w_E 1, w_F 100, w_S 1)" in log
    assert "with the EMA parameters" in log and "* = best validation loss so far, best.ckpt saved" in log
    epoch_lines = re.findall(r"\] epoch +\d+ .*", log)
    assert len(epoch_lines) == result.epochs and all("meV/Å³" in line for line in epoch_lines)
    n = result.epochs
    assert f"epoch {n - 1:4d} " in epoch_lines[-1]
    assert f"stopped (max_epochs) after {n} epochs (last epoch {n - 1});" in log
    stress_mae = result.test_metrics["stress_meV_per_A3"]["mae"]
    assert f"{stress_mae * 1e-3 * 160.21766:9.3f}  RMSE" in log and "GPa  (n=54)" in log


def test_log_legend_without_stress_or_validation_set():
    from types import SimpleNamespace

    from nnpes.config import TrainingConfig
    from nnpes.training.trainer import _explain_log

    lines = []
    tcfg = TrainingConfig(loss="huber", ema_decay=None, stress_weight=0.0)
    _explain_log(SimpleNamespace(cfg=SimpleNamespace(training=tcfg), use_stress=False, valid_loader=None, log=lines.append))
    assert lines[0].startswith("epoch lines: loss train / valid = w_E·L_E + w_F·L_F (w_E 1, w_F 100); ")
    assert "2·Huber error of energy per atom (eV/atom) and force components (eV/Å); " in lines[0]
    assert "valid = the training set (there is no validation set), with the current parameters" in lines[0]
    assert lines[1].startswith("valid E, F = validation MAE (meV/atom, meV/Å); ") and "Å³" not in lines[1]


def test_learning_curve_has_learning_rate_and_stress_and_reads_old_files(full_run, tmp_path):
    import matplotlib.pyplot as plt

    from nnpes.training.metrics import learning_curve_figure, plot_learning_curve, read_csv

    run_dir, result = full_run
    fig = learning_curve_figure(read_csv(run_dir / "metrics.csv"))
    axes = {ax.get_ylabel(): ax for ax in fig.axes}
    lr = axes["learning rate"]
    assert lr.get_yscale() == "log" and len(lr.get_lines()) == 1
    assert len(lr.get_lines()[0].get_ydata()) == result.epochs
    assert len(axes["stress error (meV/Å³)"].get_lines()) == 4  # train/valid × MAE/RMSE
    assert {t.get_text() for t in axes["loss terms w·L"].get_legend().get_texts()} == {
        f"{split} {term}" for split in ("train", "valid") for term in ("energy", "forces", "stress")}
    plt.close(fig)
    old = tmp_path / "old.csv"  # the first metrics.csv format: 14 columns
    old.write_text("epoch,step,time_s,lr,train_loss,valid_loss,train_e_mae_meV_atom,train_f_mae_meV_A,"
                   "train_f_rmse_meV_A,valid_e_mae_meV_atom,valid_e_rmse_meV_atom,valid_f_mae_meV_A,"
                   "valid_f_rmse_meV_A,valid_s_mae_meV_A3\n0,6,1.5,0.001,2.5,2.6,10,90,120,11,13,95,125,nan\n")
    d = read_csv(old)
    assert d["train_loss"][0] == 2.5 and np.isnan(d["train_s_rmse_meV_A3"][0])
    assert plot_learning_curve(old, tmp_path / "old.png").stat().st_size > 1000


def test_parity_titles_and_test_table_carry_units():
    import matplotlib.pyplot as plt

    from nnpes.training.evaluate import error_metrics, format_metrics, parity_figure

    rng = np.random.default_rng(0)
    f_ref, s_ref = rng.normal(size=(8, 3)), rng.normal(scale=0.01, size=(2, 3, 3))
    cmp = {"e_ref": np.array([-10.0, -12.0]), "e_pred": np.array([-10.004, -11.99]), "n_atoms": np.array([4, 4]),
           "f_ref": f_ref, "f_pred": f_ref + 0.01, "f_symbol": np.array(["Cu"] * 8),
           "s_ref": s_ref, "s_pred": s_ref + 5e-4}
    fig = parity_figure(cmp)
    titles = [ax.get_title() for ax in fig.axes]
    plt.close(fig)
    assert "MAE 1.75 meV/atom, RMSE 1.9 meV/atom" in titles[0]  # |ΔE|/N = 1 and 2.5 meV/atom
    assert "MAE 10 meV/Å, RMSE 10 meV/Å" in titles[1]
    assert "MAE 0.5 meV/Å³, RMSE 0.5 meV/Å³\n(MAE 0.0801 GPa, RMSE 0.0801 GPa)" in titles[2]
    table = format_metrics(error_metrics(cmp))
    assert "MAE     0.500  RMSE     0.500  meV/Å³" in table and "MAE     0.080  RMSE     0.080  GPa" in table


def _metrics_rows(run_dir) -> list[dict]:
    import csv

    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _tensorboard_scalars(logdir) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TensorBoard event files in ``logdir`` (TFRecord framing:
    length, its CRC, the serialized ``Event``, its CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_tensorboard_event_files_hold_every_metrics_column(full_run):
    pytest.importorskip("tensorboardX")
    run_dir, result = full_run
    rows = _metrics_rows(run_dir)
    scalars = _tensorboard_scalars(run_dir / "tensorboard")
    assert set(scalars) == set(rows[0]) - {"epoch"}
    for r in rows:
        for tag, by_step in scalars.items():
            assert by_step[int(r["epoch"])] == pytest.approx(r[tag], rel=1e-5), tag


def test_wandb_run_gets_every_metrics_row(full_run, fake_wandb):
    run_dir, result = full_run
    rows = _metrics_rows(run_dir)
    init = [c[1] for c in fake_wandb.calls if c[0] == "init"]
    assert len(init) == 1 and init[0]["project"] == "nnpes-tests" and init[0]["mode"] == "offline"
    assert init[0]["config"]["training"]["stress_weight"] == 1.0  # the run's config goes with it
    logged = [c for c in fake_wandb.calls if c[0] == "log"]
    assert [step for _, _, step in logged] == [int(r["epoch"]) for r in rows]
    for (_, data, _), r in zip(logged, rows):
        assert set(data) == set(r) - {"epoch"}
        assert all(data[k] == pytest.approx(r[k], rel=1e-5) for k in data)
    assert fake_wandb.calls[-1] == ("finish",) and (run_dir / "wandb_run_id").read_text() == "fake123"


def test_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    from nnpes.training.trackers import WandbLog

    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    WandbLog({"project": "p"}, tmp_path, {}, resume=False)
    WandbLog({"project": "p"}, tmp_path, {}, resume=True)
    first, second = (c[1] for c in fake.calls if c[0] == "init")
    assert "id" not in first and first["dir"] == str(tmp_path)
    assert second["id"] == "fake123" and second["resume"] == "allow"


def test_killed_and_resumed_equals_uninterrupted(killed_run, full_run, data_dir):
    from nnpes.training import train

    killed_dir, result, epoch = killed_run
    assert result.epochs == epoch + 2 and result.stop_reason == "max_epochs"
    for a, b in zip(_model_leaves(full_run[0]), _model_leaves(killed_dir)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    rows = (killed_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + epoch + 2  # header + one row per epoch, none repeated after the resume
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(data_dir), killed_dir, quiet=True)


def test_resume_refuses_other_config_or_data_and_writes_nothing(killed_run, data_dir, tmp_path):
    """Issue 12: --resume with a new split (or model, or data) used to continue silently, mixing
    the run's weights with new data; now it names what changed, points to --init-from and leaves
    the run directory as it was."""
    import shutil

    import yaml

    from nnpes.config import load_config
    from nnpes.training import train
    from nnpes.training.run_record import ResumeError, RunRecord

    run_dir = killed_run[0]

    def files():  # the run's files; .lock only records who last held the directory (nnpes.lock)
        return {f.name: f.read_bytes() for f in run_dir.iterdir() if f.is_file() and f.name != ".lock"}

    before = files()
    cfg = yaml.safe_load((run_dir.parent / "cfg.yaml").read_text())
    for section, key, value, shown in [("data", "split_seed", 1, "data.split_seed: 0 → 1"),
                                       ("model", "features", 16, "model.features: 8 → 16")]:
        changed = {**cfg, section: {**cfg[section], key: value}}
        with pytest.raises(ResumeError, match=f"{shown}.*--init-from"):
            train(changed, run_dir, resume=True, quiet=True)
    assert files() == before
    # the same file name with other contents
    shutil.copy(data_dir / "cu.extxyz", tmp_path / "cu.extxyz")
    moved = {**cfg, "data": {**cfg["data"], "train": str(tmp_path / "cu.extxyz")}}
    old = RunRecord.of(load_config(moved))
    assert old.differences(RunRecord.of(load_config(cfg))) == []  # a moved copy is the same data
    with open(tmp_path / "cu.extxyz", "a") as f:
        f.write((data_dir / "cu_test.extxyz").read_text())
    assert [d.split(":")[0] for d in old.differences(RunRecord.of(load_config(moved)))] == ["data.train"]
    assert "data.train: other contents" in RunRecord.load(run_dir).differences(RunRecord.of(load_config(moved)))[0]
    with pytest.raises(ResumeError, match="holds no run"):
        train(cfg, tmp_path / "typo", resume=True, quiet=True)
    assert not (tmp_path / "typo").exists()


def test_crash_between_epoch_and_its_metrics_row_loses_no_row(data_dir, tmp_path, monkeypatch):
    """A crash at the moment an epoch is being logged, then --resume: one metrics row per epoch.
    (Before the fix the checkpoint was saved first, so the epoch being logged lost its row.)"""
    import csv

    from nnpes.training import metrics, train

    original, calls = metrics.CSVLog.write, []

    def crash_on_third(self, row):
        calls.append(row["epoch"])
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill while logging epoch 2")
        original(self, row)

    monkeypatch.setattr(metrics.CSVLog, "write", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(_config(data_dir, max_epochs=4), tmp_path / "run", quiet=True)
    monkeypatch.setattr(metrics.CSVLog, "write", original)
    result = train(_config(data_dir, max_epochs=4), tmp_path / "run", resume=True, quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert result.epochs == 4 and [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]


def test_max_time_or_sigterm_stop_inside_an_epoch_and_resume_from_the_next_batch(data_dir, tmp_path, monkeypatch):
    """Issue 12: max_time was checked only between epochs (150 s gave 208 s). Now after every step;
    the stop saves the batches done and the epoch's sums, and --resume ends where an uninterrupted
    run ends, metrics rows included. The clock is a counter, so the stop lands at a fixed batch.
    A SIGTERM (a scheduler's end of a job) in the middle of an epoch does the same and raises
    TrainingInterrupted; before, it killed the run at once, losing the epoch and leaving no log line."""
    import csv
    import itertools

    from flax import serialization

    from nnpes.errors import TrainingInterrupted
    from nnpes.training import metrics, train, trainer

    cfg = _config(data_dir, max_epochs=3, stress_weight=0.0)
    full = train(cfg, tmp_path / "full", quiet=True)
    ticks = itertools.count()
    monkeypatch.setattr(trainer, "clock", lambda: float(next(ticks)))
    cut = train({**cfg, "training": {**cfg["training"], "max_time": 10}}, tmp_path / "cut", quiet=True)
    saved = serialization.msgpack_restore((tmp_path / "cut" / "latest.ckpt").read_bytes())
    assert cut.stop_reason == "max_time" and int(saved["epoch"]) == 1 and 0 < int(saved["batch"]) < 5
    assert "max_time reached in epoch 1" in (tmp_path / "cut" / "train.log").read_text()
    monkeypatch.undo()

    add, steps = metrics.EpochSums.add, itertools.count(1)

    def sigterm_at_step_7(self, m, n):  # a call inside epoch 1 (the adds count train and validation batches)
        if next(steps) == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return add(self, m, n)

    monkeypatch.setattr(metrics.EpochSums, "add", sigterm_at_step_7)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM") as stopped:
        train(cfg, tmp_path / "term", quiet=True)
    monkeypatch.undo()
    assert stopped.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is before
    saved = serialization.msgpack_restore((tmp_path / "term" / "latest.ckpt").read_bytes())
    said = re.search(r"SIGTERM received in epoch 1 after (\d+) of (\d+) batches", (tmp_path / "term" / "train.log").read_text())
    assert int(saved["epoch"]) == 1 and 0 < int(saved["batch"]) == int(said[1]) < int(said[2])
    assert not (tmp_path / "term" / "model").exists()  # no model or test set in a scheduler's grace time

    for d in ("cut", "term"):
        resumed = train(cfg, tmp_path / d, resume=True, quiet=True)
        assert resumed.epochs == full.epochs == 3
        for a, b in zip(_model_leaves(tmp_path / "full"), _model_leaves(tmp_path / d)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        rows = [list(csv.DictReader(open(tmp_path / r / "metrics.csv"))) for r in ("full", d)]
        for col in ("train_loss", "train_f_mae_meV_A", "valid_loss"):
            np.testing.assert_allclose([float(r[col]) for r in rows[1]], [float(r[col]) for r in rows[0]], rtol=1e-10)


def test_a_second_signal_stops_at_once_and_the_command_exits_with_the_signals_status(monkeypatch, capsys):
    """The first SIGINT only asks to stop (the step finishes, latest.ckpt is saved); a second one
    raises KeyboardInterrupt. ``nnpes train`` stopped by SIGTERM exits with 143 and one line."""
    import nnpes.training
    from nnpes.cli import main as cli
    from nnpes.errors import TrainingInterrupted
    from nnpes.training.stopping import StopRequest, signals_request_stop

    stop = StopRequest(lambda: 0.0)
    with signals_request_stop(stop):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.reason() == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)

    def stopped(*args, **kwargs):
        raise TrainingInterrupted("stopped by SIGTERM; runs/x/latest.ckpt saved, --resume goes on from the next batch", 15)

    monkeypatch.setattr(nnpes.training, "train", stopped)
    assert cli.main(["train", "any.yaml"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "nnpes train: stopped by SIGTERM; runs/x/latest.ckpt saved, --resume goes on from the next batch"


def test_late_stage_raises_energy_weight_and_lowers_lr(data_dir, tmp_path):
    """MACE's stage two as a weight_schedule stage: from epoch 2 on, w_E = 1e4 and lr × 0.1. Its
    loss is weighted anew, so the best model is chosen within it: before, the stage's larger loss
    never beat stage one's and the saved model silently came from stage one."""
    import csv

    from nnpes.training import train

    cfg = _config(data_dir, max_epochs=4, schedule="constant", warmup_epochs=0.0,
                  weight_schedule=[{"epoch": 2, "energy_weight": 1.0e4, "lr_factor": 0.1}])
    result = train(cfg, tmp_path / "run", quiet=True)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    lr = [float(r["lr"]) for r in rows]
    assert lr[0] == lr[1] == pytest.approx(5e-3) and lr[2] == lr[3] == pytest.approx(5e-4)
    valid = [float(r["valid_loss"]) for r in rows]
    assert min(valid[2:]) > min(valid[:2])  # the stage's weights raised the loss: the case that failed
    assert result.best_epoch == 2 + int(np.argmin(valid[2:]))
    assert "best validation loss starts anew" in (tmp_path / "run" / "train.log").read_text()
    from nnpes.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="lr_factor"):
        load_config({**cfg, "training": {**cfg["training"], "weight_schedule": [{"epoch": 1, "lr_factor": 0.0}]}})


def test_resume_may_change_the_stages_the_run_has_not_begun(data_dir, tmp_path):
    """A long run resumed with a stage two added after its checkpoint ends where an uninterrupted
    run with that schedule ends; a change to a stage already begun is refused (it used to refuse
    any change, so a run cut short lost its stage two)."""
    from nnpes.training import train
    from nnpes.training.run_record import ResumeError

    late = [{"epoch": 3, "energy_weight": 10.0, "lr_factor": 0.1}]
    train(_config(data_dir, max_epochs=2), tmp_path / "cut", quiet=True)
    with pytest.raises(ResumeError, match="weight_schedule: the stages of epochs 0–1"):
        train(_config(data_dir, max_epochs=4, weight_schedule=[{"epoch": 1, "energy_weight": 10.0}]),
              tmp_path / "cut", resume=True, quiet=True)
    resumed = train(_config(data_dir, max_epochs=4, weight_schedule=late), tmp_path / "cut", resume=True, quiet=True)
    full = train(_config(data_dir, max_epochs=4, weight_schedule=late), tmp_path / "full", quiet=True)
    assert resumed.epochs == full.epochs == 4
    for a, b in zip(_model_leaves(tmp_path / "full"), _model_leaves(tmp_path / "cut")):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    full_lr = [r["lr"] for r in _metrics_rows(tmp_path / "full")]
    assert [r["lr"] for r in _metrics_rows(tmp_path / "cut")] == pytest.approx(full_lr, rel=1e-12)
    assert full_lr[3] == pytest.approx(0.1 * full_lr[2] * 0.9, rel=0.05)  # the stage did act (exponential 0.9/epoch)


def test_fine_tune_a_float32_run_in_float64_keeps_weights_and_normalisation(data_dir, tmp_path):
    import csv

    from ase.io import read

    from nnpes import build_potential, load_potential
    from nnpes.config import ConfigError
    from nnpes.training import train

    first = _config(data_dir, max_epochs=2)
    first["model"] = {**first["model"], "dtype": "float32"}
    a = train(first, tmp_path / "a", quiet=True)
    saved = load_potential(a.model)
    second = _config(data_dir, max_epochs=1)
    second["model"] = {**second["model"], "dtype": "float64", "init_from": str(tmp_path / "a")}  # a run dir
    pot = build_potential(second)
    assert {str(x.dtype) for x in jax.tree_util.tree_leaves(pot.params)} == {"float64"}
    assert (pot.config.e0, pot.config.scale, pot.config.avg_num_neighbors) == (
        saved.config.e0, saved.config.scale, saved.config.avg_num_neighbors)
    frame = read(data_dir / "cu_test.extxyz", index=0)
    np.testing.assert_allclose(pot.predict(frame)["forces"], saved.predict(frame)["forces"], rtol=1e-4, atol=1e-5)
    b = train(second, tmp_path / "b", quiet=True)
    loss = [float(next(csv.DictReader(open(tmp_path / r / "metrics.csv")))["train_loss"]) for r in ("a", "b")]
    assert loss[1] < loss[0]  # the fine-tune starts from the trained weights, not from scratch
    assert load_potential(b.model).config.init_from is None
    for change, match in (({"elements": ["Cu", "Al", "Ni"]}, r"\['Ni'\] are new"), ({"features": 4}, "must describe"),
                          ({"avg_num_neighbors": 3.0}, "avg_num_neighbors")):
        with pytest.raises(ConfigError, match=match):
            build_potential({**second["model"], **change})


def test_fine_tune_with_frozen_modules_changes_only_the_others(killed_run, data_dir, tmp_path):
    from nnpes.potential import load_potential
    from nnpes.training import train

    start = load_potential(Path(killed_run[0]) / "model").params["params"]
    cfg = _config(data_dir, max_epochs=1, freeze=["Dense_0", "e0"])
    cfg["model"] = {**cfg["model"], "init_from": str(killed_run[0])}
    tuned = load_potential(train(cfg, tmp_path / "ft", quiet=True).model).params["params"]
    for path, before in jax.tree_util.tree_flatten_with_path(start)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        after = np.asarray(dict(jax.tree_util.tree_flatten_with_path(tuned)[0])[path])
        frozen = name.startswith(("inner/Dense_0/", "e0"))
        assert np.array_equal(after, np.asarray(before)) == frozen, name
    with pytest.raises(ValueError, match=r"\['embeding'\] match no parameter.*Dense_1"):
        train(_config(data_dir, max_epochs=1, freeze=["embeding"]), tmp_path / "bad", quiet=True)


def test_element_not_in_model_is_named(data_dir, tmp_path):
    from nnpes.data import DataError
    from nnpes.training import train

    cfg = _config(data_dir)
    cfg["model"]["elements"] = ["Cu"]
    cfg["data"]["train"] = str(data_dir / "cual.extxyz")
    with pytest.raises(DataError, match=r"cual\.extxyz, frame 0: element\(s\) \['Al'\]"):
        train(cfg, tmp_path / "r", quiet=True)
    cfg["data"]["train"] = str(data_dir / "missing.extxyz")
    with pytest.raises(FileNotFoundError, match="missing.extxyz"):
        train(cfg, tmp_path / "r2", quiet=True)


def test_evaluate_cli_writes_metrics_and_plot(full_run, data_dir, tmp_path, capsys):
    import json

    from nnpes.cli.main import main

    run_dir, result = full_run
    out, png = tmp_path / "m.json", tmp_path / "p.png"
    assert main(["evaluate", str(run_dir), str(data_dir / "cu_test.extxyz"), "--out", str(out), "--plot", str(png)]) == 0
    m = json.loads(out.read_text())
    assert png.stat().st_size > 1000
    # the same model on the same data as the run's own test evaluation
    np.testing.assert_allclose(m["forces_meV_per_A"]["mae"], result.test_metrics["forces_meV_per_A"]["mae"], rtol=1e-9)
    assert "forces" in capsys.readouterr().out


def test_oracle_xtb_forces_are_minus_energy_gradient(tmp_path):
    from ase.build import molecule

    from nnpes.data import read_structures
    from nnpes.oracle import label
    from nnpes.workflows.quickstart import generate_ethanol

    water = molecule("H2O")
    shifted = water.copy()
    h = 1e-4
    plus, minus = shifted.copy(), shifted.copy()
    plus.positions[1, 0] += h
    minus.positions[1, 0] -= h
    a, p, m = label([water, plus, minus])
    numeric = -(p.get_potential_energy() - m.get_potential_energy()) / (2 * h)
    np.testing.assert_allclose(a.get_forces()[1, 0], numeric, rtol=1e-3, atol=1e-4)
    assert water.calc is None  # inputs untouched

    path = generate_ethanol(tmp_path / "eth.extxyz", 3, equilibrate=5, stride=2, log=None)
    frames = read_structures(path)
    assert len(frames) == 3 and len({round(f.get_potential_energy(), 8) for f in frames}) == 3
    # the stored labels are the oracle's at the stored positions (MD constraints must not leak in)
    again = label(frames[-1:])[0]
    np.testing.assert_allclose(frames[-1].get_forces(), again.get_forces(), atol=1e-3)  # extxyz text precision
    np.testing.assert_allclose(frames[-1].get_potential_energy(), again.get_potential_energy(), atol=1e-4)
