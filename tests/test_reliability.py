"""Issue 14, runs that cannot corrupt each other: the run directory lock (a second ``nnpes train``
/ ``nnpes active-learn`` fails at once; a lock left by a ``kill -9``'d process does not block). The
other process holding a lock is a tiny script that says when it holds it, so no test depends on
timing. The label store's one record per key; training refused without usable labels
(``data.energy_key`` / ``data.forces_key``); ``nnpes md`` stopping a run that blew up. Tiny model
and EMT copper of ``test_training``; MD on ``_toy``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from ase import Atoms

from test_training import _config, _copper, data_dir  # noqa: F401  (registers "_tiny_mlp"; data_dir is a fixture)

# The holder loads nnpes/lock.py alone (it imports nothing of nnpes), so it starts in a blink.
HOLD = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('lock', sys.argv[1]); "
        "m = sys.modules['lock'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "lock = m.lock_run_dir(sys.argv[2]); print('locked', flush=True); sys.stdin.read()")


@contextmanager
def held_by_another_process(run_dir):
    """A child process that holds ``run_dir``'s lock until it is killed or the block ends."""
    from nnpes import lock

    proc = subprocess.Popen([sys.executable, "-c", HOLD, lock.__file__, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"locked\n"  # it holds the lock from here on
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _in_use(run_dir, pid) -> str:
    """The error's text up to the start time, as a regex."""
    return rf"run directory {run_dir} is in use by pid {pid} on {socket.gethostname()} \(started at "


def _write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---- item 1: two runs in one directory -----------------------------------------------------


def test_a_second_run_on_a_run_directory_in_use_fails_at_once_and_a_killed_holder_does_not_block(
        data_dir, tmp_path, capsys):  # noqa: F811
    from nnpes.active.loop import ActiveLearning
    from nnpes.cli.main import main
    from nnpes.lock import RunDirInUse
    from nnpes.training import train
    from test_active import loop_config

    run_dir = tmp_path / "run"
    cfg = _config(data_dir)
    cfg["output"]["plots"] = False
    train_yaml = _write_config(cfg, tmp_path / "train.yaml")
    al_yaml = _write_config(loop_config(tmp_path), tmp_path / "al.yaml")
    with held_by_another_process(run_dir) as holder:
        message = _in_use(run_dir, holder.pid)
        with pytest.raises(RunDirInUse, match=message + r".*\); wait for it or choose another --run-dir$"):
            train(cfg, run_dir, quiet=True)
        with pytest.raises(RunDirInUse, match=message):  # a committee locks its own directory
            train({**cfg, "training": {**cfg["training"], "committee": 2}}, run_dir, quiet=True)
        with pytest.raises(RunDirInUse, match=message):
            ActiveLearning(loop_config(tmp_path), run_dir, log=None)
        capsys.readouterr()
        for argv in (["train", str(train_yaml), "--run-dir", str(run_dir)],
                     ["train", str(train_yaml), "--run-dir", str(run_dir), "--resume"],
                     ["active-learn", str(al_yaml), "--run-dir", str(run_dir)]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"in use by pid {holder.pid}" in err, err
        assert [p.name for p in run_dir.iterdir()] == [".lock"]  # nothing was checked or written
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the OS drops it
        holder.wait()
        assert json.loads((run_dir / ".lock").read_text())["pid"] == holder.pid  # the record stays behind
    result = train({**cfg, "training": {**cfg["training"], "max_epochs": 0}}, run_dir, quiet=True)  # ... and does not block
    assert (run_dir / "model").is_dir() and result.run_dir == str(run_dir)
    with held_by_another_process(run_dir):  # the run released it when it ended
        pass


def test_the_lock_is_reentrant_in_its_thread_refuses_other_threads_and_committee_members_lock_their_own(tmp_path):
    from nnpes.lock import RunDirInUse, lock_run_dir

    run_dir = tmp_path / "committee"
    errors = []

    def other_thread():
        try:
            lock_run_dir(run_dir)
        except RunDirInUse as e:
            errors.append(str(e))

    with lock_run_dir(run_dir) as outer:
        with lock_run_dir(run_dir):  # nested (train → train_committee; active-learning run → loop)
            pass
        assert outer.held
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(errors) == 1 and f"in use by pid {os.getpid()}" in errors[0]
        with held_by_another_process(run_dir / "members" / "0"):  # a member's lock is its own directory's
            pass
    with held_by_another_process(run_dir):  # released after the outer block
        pass


# ---- item 2: the label store holds a key once --------------------------------------------------


def test_label_store_ignores_a_key_it_already_holds(tmp_path):
    from nnpes.oracle import CalculatorOracle, LabelStore, label_into_store

    atoms = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.5]])
    result = {"energy": 1.0, "forces": np.zeros((2, 3))}
    store = LabelStore(tmp_path / "labels.jsonl")
    assert store.add_result("a", atoms, result) is True
    assert store.add_result("a", atoms, {**result, "energy": 2.0}) is False  # a replay or a second writer
    assert store.add_result("b", atoms, None, error="boom") is True
    assert store.add_result("b", atoms, result) is False
    lines = store.path.read_text().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "b"] and len(store) == 2
    # a file that already holds a key twice reads back with its first record only
    with open(store.path, "a") as f:
        f.write(lines[0].replace('"energy":1.0', '"energy":3.0') + "\n")
    reopened = LabelStore(store.path)
    assert len(reopened) == 2 and [a.get_potential_energy() for a in reopened.atoms("ok")] == [1.0]
    # a key given twice in one call is labelled once
    counts = label_into_store([atoms, atoms, atoms], ["c", "c", "a"], CalculatorOracle("ase.calculators.emt.EMT"), reopened)
    assert counts["submitted"] == 1 and counts["skipped"] == 2
    assert [r["key"] for r in LabelStore(store.path).records] == ["a", "b", "c"]


# ---- item 3: training with no usable labels --------------------------------------------------


def _ref_labelled(frames: list) -> list:
    """The frames with their labels under other names (REF_energy / REF_forces), no calculator."""
    out = []
    for a in frames:
        b = Atoms(a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc)
        b.info["REF_energy"] = a.get_potential_energy()
        b.new_array("REF_forces", a.get_forces())
        out.append(b)
    return out


def test_training_refuses_a_file_without_usable_labels_and_trains_with_its_label_keys(data_dir, tmp_path, capsys):  # noqa: F811
    from ase.io import write

    from nnpes.cli.main import main
    from nnpes.data import DataError
    from nnpes.training import train

    ref = tmp_path / "ref.extxyz"
    write(ref, _ref_labelled(_copper(12, 3)))
    cfg = _config(data_dir, max_epochs=1)
    cfg["data"] = {"train": str(ref), "n_valid": 0}  # no validation or test: one compile, the train step
    cfg["output"]["plots"] = False
    expected = (f"{ref}: no energy or force labels in the training split (keys found: REF_energy, REF_forces); "
                "set data.energy_key / data.forces_key")
    with pytest.raises(DataError) as e:
        train(cfg, tmp_path / "refused", quiet=True)
    assert str(e.value) == expected
    capsys.readouterr()
    assert main(["train", str(_write_config(cfg, tmp_path / "cfg.yaml")), "--run-dir", str(tmp_path / "cli")]) == 2
    assert capsys.readouterr().err == f"nnpes train: error: {expected}\n"
    assert not (tmp_path / "cli" / "latest.ckpt").exists()

    cfg["data"].update(energy_key="REF_energy", forces_key="REF_forces")
    result = train(cfg, tmp_path / "run", quiet=True)
    row = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    row = dict(zip(row[0].split(","), row[1].split(",")))
    assert float(row["train_loss_energy"]) > 0 and float(row["train_loss_forces"]) > 0
    assert result.epochs == 1 and (tmp_path / "run" / "model").is_dir()
    assert result.test_metrics is None and not list((tmp_path / "run").glob("*_metrics.json"))  # nothing held out


def test_forces_without_energies_warn_loudly(tmp_path):
    from ase.io import write

    from nnpes.data import read_structures
    from nnpes.training.data import check_train_labels

    frames = _ref_labelled(_copper(2, 4))
    for a in frames:
        a.arrays["forces"] = a.arrays.pop("REF_forces")
    write(tmp_path / "f.extxyz", frames)
    warning = check_train_labels(read_structures(tmp_path / "f.extxyz"))
    assert "force labels but no energy labels" in warning and "REF_energy" in warning and "E0" in warning
    assert check_train_labels(read_structures(tmp_path / "f.extxyz", energy_key="REF_energy")) is None


def test_runs_recorded_before_the_label_keys_existed_still_resume(data_dir):  # noqa: F811
    from nnpes.config import load_config
    from nnpes.training.run_record import RunRecord

    new = RunRecord.of(load_config(_config(data_dir)))
    assert new.config["data.energy_key"] is None
    old = RunRecord({k: v for k, v in new.config.items() if not k.endswith("_key")}, new.files)
    assert old.differences(new) == []
    keyed = RunRecord.of(load_config({**_config(data_dir), "data": {**_config(data_dir)["data"], "energy_key": "E"}}))
    assert old.differences(keyed) == ["data.energy_key: None → 'E'"]


def test_a_run_resumes_across_a_changed_default_of_a_speed_only_model_key(data_dir):  # noqa: F811
    """NequIP's ``block_above`` default went from 16 384 to 8 192 edges: a run recorded with the
    old default must still resume (the key changes how the energy is computed, not what it is),
    while a key that changes the model still refuses. Before, resuming named block_above."""
    from nnpes.config import load_config
    from nnpes.training.run_record import RunRecord

    cfg = {**_config(data_dir), "model": {"name": "nequip", "elements": ["Cu", "Al"], "cutoff": 3.0}}
    new = RunRecord.of(load_config(cfg))
    assert new.config["model.block_above"] == 8192
    old = RunRecord({**new.config, "model.block_above": 16384, "model.edge_chunk": 512}, new.files)
    assert old.differences(new) == []
    wider = RunRecord.of(load_config({**cfg, "model": {**cfg["model"], "features": 16}}))
    assert old.differences(wider) == ["model.features: 32 → 16"]


# ---- item 4: nnpes md knows when a run blew up -----------------------------------------------


@pytest.fixture(scope="module")
def hydrogen(tmp_path_factory):
    """A ``_toy`` potential for H (repulsive at short range), saved, and a rattled simple-cubic H
    box: stable with a 0.25 fs step, blown up within 10 steps of 20 fs."""
    import _toy_model  # noqa: F401  (registers "_toy")
    from nnpes.potential import build_potential

    pot = build_potential({"name": "_toy", "elements": ["H"], "cutoff": 3.0, "dtype": "float64"}, seed=0)
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=[1.6, 1.6, 1.6], pbc=True).repeat(3)
    atoms.rattle(0.05, seed=0)
    return pot, pot.save(tmp_path_factory.mktemp("h") / "model"), atoms


def test_md_with_a_20_fs_step_stops_with_an_error_and_keeps_its_output(hydrogen, tmp_path, capsys):
    from ase.io import read, write

    from nnpes.cli.main import main
    from nnpes.md import read_thermo

    _, model_dir, atoms = hydrogen
    write(tmp_path / "h.extxyz", atoms)
    out = tmp_path / "md"
    rc = main(["md", str(model_dir), str(tmp_path / "h.extxyz"), "--timestep", "20", "--steps", "200",
               "--thermo-every", "10", "--traj-every", "50", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1 and "ns/day" not in captured.out
    assert captured.err.count("\n") == 1 and captured.err.startswith("nnpes md: error: MD blew up at step 10 (200 fs): "
                                                                      "temperature "), captured.err
    assert "> max_temperature 5000 K" in captured.err and str(out) in captured.err
    assert list(read_thermo(out / "thermo.log")["step"]) == [0, 10]
    frames = read(out / "trajectory.extxyz", index=":")
    assert [f.info["step"] for f in frames] == [0, 10]  # frame 0, and the frame that failed


def test_md_stops_on_overlapping_atoms_energy_drift_and_atoms_flying_apart(hydrogen, tmp_path):
    from nnpes.md import MDInstability, run_md

    pot, _, atoms = hydrogen
    overlap = atoms.copy()
    overlap.positions[1] = overlap.positions[0] + [0.3, 0.0, 0.0]
    with pytest.raises(MDInstability, match=r"at step 0 \(0 fs\): atoms 0 and 1 are 0\.300 Å apart \(min_distance 0\.5 Å\)"):
        run_md(pot, overlap, steps=20, timestep=0.25, out_dir=tmp_path / "overlap")
    assert len((tmp_path / "overlap" / "trajectory.extxyz").read_text().splitlines()) == 2 + len(atoms)
    settings = dict(steps=20, timestep=0.25, ensemble="nve", temperature=300.0, thermo_every=10)
    ok = run_md(pot, atoms, **settings)  # the bounds as they are: the run is fine
    assert ok.steps == 20
    with pytest.raises(MDInstability, match=r"at step 10 .*conserved energy drifted by .* eV/atom \(max_energy_drift 1e-12"):
        run_md(pot, atoms, max_energy_drift=1e-12, **settings)
    with pytest.raises(MDInstability, match=r"at step 10 .*atom \d+ moved .* Å in 2\.5 fs \(max_displacement 0\.001 Å\): "
                                            "the atoms are flying apart"):
        run_md(pot, atoms, max_displacement=1e-3, **settings)
