"""Issue 14: the ``nnpes`` command driven through bad input and crashes, in process (``main(argv)``).

A user at fault gets one line, ``nnpes CMD: error: ...`` naming the file or key, exit code 2 and no
traceback; a bug still raises. Crashes are injected at chosen points (an exception raised where a
``kill -9`` could land, or an oracle that kills its own worker), never by timing; the two tests that
need a real ``kill -9`` of a process use tiny scripts. Tiny model and EMT copper of
``test_training``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_training import _config, _copper, data_dir  # noqa: F401  (registers "_tiny_mlp"; data_dir is a fixture)

TINY = {"name": "_tiny_mlp", "elements": ["Cu", "Al"], "cutoff": 3.0, "features": 8}


def cli(argv, capsys) -> tuple[int, str]:
    """Run ``nnpes argv`` in this process: (exit code, stderr)."""
    from nnpes.cli.main import main

    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_line_error(rc, err, command, *fragments) -> str:
    """The error line, after checking it is one line with no traceback and names ``fragments``."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"nnpes {command}: error: ")]
    assert len(lines) == 1, err
    for f in fragments:
        assert str(f) in lines[0], lines[0]
    return lines[0]


def write_config(path: Path, cfg) -> Path:
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


# ---- bad input: one line naming the file or key -------------------------------------------------------


def test_bad_data_files_give_one_line_naming_the_file(data_dir, tmp_path, capsys):  # noqa: F811
    empty, noise = tmp_path / "empty.npz", tmp_path / "noise.npz"
    empty.write_bytes(b"")
    noise.write_bytes(np.random.default_rng(0).bytes(300))
    for path, says in ((empty, "the file is empty"), (noise, "not a zip archive"), (tmp_path, "is a directory")):
        cfg = _config(data_dir, max_epochs=1)
        cfg["data"]["train"] = str(path)
        rc, err = cli(["train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", tmp_path / f"r_{path.name}"], capsys)
        line = one_line_error(rc, err, "train", path, says)
        assert "pickle" not in line and "bundletrajectory" not in line
    # a line missing in frame 2 of an extxyz file: the message names frame 2, not frame 0
    lines = (data_dir / "cu.extxyz").read_text().splitlines()
    frame = int(lines[0]) + 2
    del lines[2 * frame + 3]
    broken = tmp_path / "broken.extxyz"
    broken.write_text("\n".join(lines) + "\n")
    cfg = _config(data_dir, max_epochs=1)
    cfg["data"]["train"] = str(broken)
    rc, err = cli(["train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", tmp_path / "r_broken"], capsys)
    one_line_error(rc, err, "train", f"{broken}, frame 2:")


@pytest.mark.parametrize("case", ["nan_lr", "inf_cutoff", "bad_yaml", "empty", "set_yaml"])
def test_bad_configs_give_one_line_naming_the_key(case, data_dir, tmp_path, capsys):  # noqa: F811
    cfg, extra = _config(data_dir, max_epochs=1), []
    if case == "nan_lr":
        cfg["training"]["lr"], says = float("nan"), ["training.lr", "NaN"]
    elif case == "inf_cutoff":
        cfg["model"]["cutoff"], says = float("inf"), ["model.cutoff", "finite"]
    elif case == "bad_yaml":
        cfg, says = "data: [\n", ["c.yaml", "not valid YAML", "line 2"]
    elif case == "empty":
        cfg, says = "", ["missing section 'data'"]
    else:
        extra, says = ["--set", "data.index=:"], ["data.index=:", "not valid YAML", "quote it"]
    rc, err = cli(["train", write_config(tmp_path / "c.yaml", cfg), "--run-dir", tmp_path / "r", *extra], capsys)
    one_line_error(rc, err, "train", *says)


def test_active_learning_config_with_a_yaml_error(tmp_path, capsys):
    rc, err = cli(["active-learn", write_config(tmp_path / "al.yaml", "oracle: {\n"), "--run-dir", tmp_path / "r"], capsys)
    one_line_error(rc, err, "active-learn", "al.yaml", "not valid YAML")


def test_a_run_directory_that_cannot_be_written(data_dir, tmp_path, capsys):  # noqa: F811
    cfg = write_config(tmp_path / "c.yaml", _config(data_dir, max_epochs=1))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, err = cli(["train", cfg, "--run-dir", blocker / "run"], capsys)  # a file where a directory must go
    one_line_error(rc, err, "train", f"run directory {blocker / 'run'} cannot be written", "--run-dir")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        rc, err = cli(["train", cfg, "--run-dir", ro], capsys)
        one_line_error(rc, err, "train", f"run directory {ro} cannot be written")


def test_diverging_training_gives_one_line_and_the_python_error_is_still_a_floating_point_error(
        data_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    from types import SimpleNamespace

    from nnpes.errors import TrainingDiverged
    from nnpes.training import metrics, trainer

    # Divergence injected at the first step, with a stand-in step (no compile): the loss is NaN.
    step = lambda state, graph, weights, lr_scale: (state, SimpleNamespace(lr=1e-3))  # noqa: E731
    monkeypatch.setattr(trainer, "_compiled_steps", lambda *a, **k: (step, None))
    monkeypatch.setattr(metrics.EpochSums, "add", lambda self, m, n: float("nan"))
    cfg = write_config(tmp_path / "c.yaml", _config(data_dir, max_epochs=1))
    rc, err = cli(["train", cfg, "--run-dir", tmp_path / "r"], capsys)
    one_line_error(rc, err, "train", "training loss is nan", "lower training.lr")
    assert issubclass(TrainingDiverged, FloatingPointError)


def test_a_bug_still_shows_its_traceback(data_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    from nnpes.training import trainer

    def bug(*a, **k):
        raise KeyError("internal")

    monkeypatch.setattr(trainer, "_setup", bug)
    cfg = write_config(tmp_path / "c.yaml", _config(data_dir, max_epochs=1))
    with pytest.raises(KeyError, match="internal"):
        cli(["train", cfg, "--run-dir", tmp_path / "r"], capsys)


# ---- models: damaged, newer, and the atoms they are given ---------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import nnpes

    path = tmp_path_factory.mktemp("model") / "model"
    nnpes.build_potential(TINY).save(path)
    return path


def _copy(model: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(model, to)
    return to


def test_damaged_and_newer_models_are_refused_on_load(saved_model, tmp_path, capsys):
    import flax.serialization

    import nnpes
    from nnpes.potential.potential import CONFIG_FILE, PARAMS_FILE

    start = tmp_path / "start.extxyz"
    from ase.io import write

    write(start, _copper(1, 0)[0])
    empty = _copy(saved_model, tmp_path / "empty")
    (empty / CONFIG_FILE).write_text("")
    rc, err = cli(["md", empty, start, "--steps", "2", "--out", tmp_path / "md"], capsys)
    one_line_error(rc, err, "md", empty / CONFIG_FILE, "empty")

    nan = _copy(saved_model, tmp_path / "nan")
    params = flax.serialization.msgpack_restore((nan / PARAMS_FILE).read_bytes())
    leaf = params["params"]["inner"]["Dense_0"]["kernel"] = np.array(params["params"]["inner"]["Dense_0"]["kernel"])
    leaf[0, 0] = np.nan
    (nan / PARAMS_FILE).write_bytes(flax.serialization.msgpack_serialize(params))
    with pytest.raises(ValueError, match=r"Dense_0.*NaN or inf"):
        nnpes.load_potential(nan)

    newer = _copy(saved_model, tmp_path / "newer")
    cfg = yaml.safe_load((newer / CONFIG_FILE).read_text())
    cfg["nnpes_version"] = "99.0.0"
    (newer / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="saved by nnpes 99.0.0, a newer major version"):
        nnpes.load_potential(newer)


def test_build_potential_rejects_an_unknown_top_level_key():
    import nnpes
    from nnpes.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"unknown top-level key 'dtype'.*model\.dtype"):
        nnpes.build_potential({"model": TINY, "dtype": "float64"})
    nnpes.build_potential({"model": TINY, "training": {}, "nnpes_version": "0.1.0"})  # full configs still load


def test_md_start_with_nan_or_atoms_flown_apart_gives_one_line(saved_model, tmp_path, capsys):
    from ase import Atoms
    from ase.io import write

    nan = _copper(1, 0)[0]
    nan.positions[3, 1] = np.nan
    write(tmp_path / "nan.extxyz", nan)
    rc, err = cli(["md", saved_model, tmp_path / "nan.extxyz", "--steps", "2", "--out", tmp_path / "md1"], capsys)
    one_line_error(rc, err, "md", "nan.extxyz", "non-finite positions for atoms [3]")

    # what a blown-up MD writes: atoms 10^6 Å apart, no cell (SIGFPE / 'invalid dims' before)
    far = Atoms("Cu4", positions=np.random.default_rng(0).uniform(-5e5, 5e5, (4, 3)))
    write(tmp_path / "far.extxyz", far)
    rc, err = cli(["md", saved_model, tmp_path / "far.extxyz", "--steps", "2", "--out", tmp_path / "md2"], capsys)
    one_line_error(rc, err, "md", "non-periodic direction", "flew apart")


def test_the_neighbour_list_checks_extents_before_the_cell_list():
    from nnpes import neighbor_list
    from nnpes.graph.neighbors import MAX_EXTENT

    positions = np.array([[0.0, 0, 0], [1.0, 0, 0], [0, 0, 2 * MAX_EXTENT]])
    with pytest.raises(ValueError, match="flew apart"):
        neighbor_list(positions, None, False, 3.0)
    # periodic along z: the span there is wrapped by the cell, not an error
    neighbor_list(positions, np.diag([10.0, 10.0, 10.0]), [False, False, True], 3.0)


# ---- item 6: a model saved over another is swapped in whole ------------------------------------------


def test_a_crash_while_saving_over_a_model_leaves_the_old_one_and_stale_tmp_is_cleaned(tmp_path, monkeypatch):
    import jax

    import nnpes
    from nnpes import files
    from nnpes.potential import potential

    path = tmp_path / "model"
    old = nnpes.build_potential(TINY, seed=0)
    old.save(path)
    new = nnpes.build_potential(TINY, seed=1)
    real = potential.atomic_write

    def crash_after_params(p, data):  # a kill -9 after the parameters, before the config
        real(p, data)
        if Path(p).name == potential.PARAMS_FILE:
            raise KeyboardInterrupt

    monkeypatch.setattr(potential, "atomic_write", crash_after_params)
    monkeypatch.setattr(files.shutil, "rmtree", lambda *a, **k: None)  # as after kill -9: nothing cleaned
    with pytest.raises(KeyboardInterrupt):
        new.save(path)
    monkeypatch.undo()
    loaded = nnpes.load_potential(path)
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), loaded.params, old.params)
    assert all(jax.tree_util.tree_leaves(same)), "the old model must load unchanged"
    stale = files.remove_stale_tmp(tmp_path)
    assert stale and not any(p.exists() for p in stale)
    new.save(path)  # and a save that completes replaces it whole
    assert np.array_equal(nnpes.load_potential(path).params["params"]["inner"]["Dense_0"]["kernel"],
                          new.params["params"]["inner"]["Dense_0"]["kernel"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "link").symlink_to(path)  # saving through a link replaces its target, keeps the link
    old.save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and nnpes.load_potential(tmp_path / "link").card is not None


def test_a_run_removes_the_stale_tmp_files_of_a_crashed_one(data_dir, tmp_path):  # noqa: F811
    from nnpes.config import load_config
    from nnpes.training.trainer import open_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / ".latest.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    (run / ".model.xyz.tmp").mkdir()
    (run / ".model.xyz.tmp" / "params.msgpack").write_bytes(b"")
    _, log, _, lock = open_run_dir(load_config(_config(data_dir)), run, False, True)
    lock.release()
    log.f.close()
    assert not list(run.glob(".*.tmp"))
    assert "removed 2 temporary file(s)" in (run / "train.log").read_text()


# ---- item 3: oracle workers that die -----------------------------------------------------------------


class DiesOnce:
    """An EMT oracle whose worker kills itself (SIGKILL) on its first call: later calls, in new
    workers, succeed. Picklable; the marker file is shared by the processes."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __call__(self, atoms):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        from nnpes.oracle import CalculatorOracle

        return CalculatorOracle("ase.calculators.emt.EMT")(atoms)


def test_a_killed_oracle_worker_is_retried_on_a_rebuilt_pool_and_resume_retries_what_is_left(tmp_path):
    from nnpes.oracle import LabelStore, SerialExecutor, label_into_store, make_executor
    from nnpes.oracle.store import WORKER, OracleWorkersDied

    structures, keys = _copper(3, 3), ["c", "a", "b"]
    store = LabelStore(tmp_path / "labels.jsonl")
    # the first worker dies (every pending call of the pool breaks): retried on a new pool
    counts = label_into_store(structures, keys, DiesOnce(tmp_path / "died"), store, make_executor("process", 1),
                              rebuild=lambda: make_executor("process", 1), retries=1)
    assert counts["ok"] == 3 and counts["failed"] == 0 and counts["retried"] >= 1
    assert LabelStore(store.path).keys() == set(keys) and [r["status"] for r in store.records] == ["ok"] * 3
    worker_failures = [r for r in map(json.loads, store.path.read_text().splitlines()) if r["status"] == "failed"]
    assert worker_failures and {r["failure"] for r in worker_failures} == {WORKER}

    # retries spent: the calls stay pending (not failed for good, not counted), and a resume labels them
    store = LabelStore(tmp_path / "pending.jsonl")
    with pytest.raises(OracleWorkersDied, match="worker process died"):
        label_into_store(structures, keys, None, store, SerialBroken(), retries=0)
    reopened = LabelStore(store.path)
    assert reopened.keys() == set() and reopened.pending() == set(keys) and len(reopened) == 0
    from nnpes.oracle import CalculatorOracle

    counts = label_into_store(structures, keys, CalculatorOracle("ase.calculators.emt.EMT"), reopened, SerialExecutor())
    assert counts["ok"] == 3 and LabelStore(store.path).keys() == set(keys)


class SerialBroken:
    """An executor whose every call ends as a dead process pool's does (no process needed)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        fut = Future()
        fut.set_exception(BrokenProcessPool("a process in the pool was terminated abruptly"))
        return fut

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_active_learning_trains_on_labels_sorted_by_key(tmp_path):
    from nnpes.active.loop import ActiveLearning

    cfg = {"model": TINY, "data": {"initial_per_start": 1, "starts": None},
           "oracle": {"type": "calculator", "calculator": "ase.calculators.emt.EMT"}}
    from ase.io import write

    write(tmp_path / "starts.extxyz", _copper(1, 0))
    cfg["data"]["starts"] = str(tmp_path / "starts.extxyz")
    al = ActiveLearning(cfg, tmp_path / "run", log=None)
    try:
        for key, atoms in zip(["k3", "k1", "k2", "k0"], _copper(4, 7)):
            al.store.add_result(key, atoms, {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()})
        train, valid = al.labelled()
        got = [a.info["al_key"] for a in train + valid]
        assert sorted(got) == ["k0", "k1", "k2", "k3"]
        assert [a.info["al_key"] for a in train] == sorted(a.info["al_key"] for a in train)
    finally:
        al.close()


# ---- kill -9 of the main process: its oracle workers die with it ------------------------------------

PARENT = """
import os, sys, time
from nnpes.oracle.store import make_executor
pool = make_executor("process", 1)
pid = pool.submit(os.getpid).result()
pool.submit(time.sleep, 600)
print(pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_oracle_workers_die_with_their_parent_after_kill_9():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_oracle_sections_and_run_records_that_do_not_fit_give_one_line(data_dir, tmp_path, capsys):  # noqa: F811
    from nnpes.oracle import make_oracle

    with pytest.raises(ValueError, match="oracle: unknown key 'bassis' for type 'pyscf'"):
        make_oracle({"type": "pyscf", "bassis": "def2-SVP"})
    with pytest.raises(ValueError, match="oracle kwargs .* do not fit ase.calculators.mixing.SumCalculator"):
        make_oracle({"type": "calculator", "calculator": "ase.calculators.mixing.SumCalculator", "kwargs": {"bogus": 1}})
    # a damaged run.yaml: --resume says which file, no traceback
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("- just\n- a list\n")
    (run / "latest.ckpt").write_bytes(b"")
    cfg = write_config(tmp_path / "c.yaml", _config(data_dir, max_epochs=1))
    rc, err = cli(["train", cfg, "--run-dir", run, "--resume"], capsys)
    one_line_error(rc, err, "train", run / "run.yaml", "damaged")


def test_a_crash_while_resume_rewrites_metrics_csv_keeps_its_rows(tmp_path, monkeypatch):
    import csv

    from nnpes.training.metrics import CSVLog, read_csv

    path = tmp_path / "metrics.csv"
    log = CSVLog(path)
    for epoch in range(3):
        log.write({"epoch": epoch, "step": 10 * epoch, "train_loss": 1.0 / (epoch + 1)})
    before = path.read_text()

    def killed(self, rows):  # a kill -9 while the resume rewrites the file
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(KeyboardInterrupt):
        CSVLog(path, resume_epoch=2)
    monkeypatch.undo()
    assert path.read_text() == before
    CSVLog(path, resume_epoch=2)  # the resume that follows drops the rows of the epoch it redoes
    assert list(read_csv(path)["epoch"]) == [0, 1]


def test_calls_whose_worker_died_before_the_failure_kind_existed_are_retried(tmp_path):
    from nnpes.oracle import LabelStore

    atoms = _copper(1, 0)[0]
    store = LabelStore(tmp_path / "labels.jsonl")  # as the old code wrote them: no "failure" field
    store.append({"key": "died", "status": "failed", "error": "executor: BrokenProcessPool: a process in the pool "
                  "was terminated abruptly", "numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                  "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()})
    store.add_result("scf", atoms, None, "OracleError: SCF not converged")
    reopened = LabelStore(store.path)
    assert reopened.pending() == {"died"} and reopened.keys() == {"scf"}
