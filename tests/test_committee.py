"""``nnpes train --committee K`` (``nnpes.training.committee``) and ``nnpes evaluate`` on a committee:
members trained by the single-model trainer (stress, validation), a calibrated saved committee,
its uncertainty in test_metrics.json and evaluate's table, resume that skips finished members, and
bootstrap members that resample the train split alone. Tiny model and data of ``test_training``."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

from test_training import _config, data_dir  # noqa: F401  (registers "_tiny_mlp"; data_dir is a fixture)

UNCERTAINTY_KEYS = {"committee_size", "std_scale", "mean_force_std_meV_per_A", "mean_max_force_std_meV_per_A",
                    "mean_energy_std_meV_per_atom", "force_components_within_1std", "force_components_within_2std",
                    "rms_force_error_over_std", "spearman_max_force_std_vs_max_force_error", "calibrated_on"}


def _write_config(data_dir, path: Path, **training) -> Path:
    cfg = _config(data_dir, **{"max_epochs": 3, **training})
    cfg["output"]["plots"] = False  # evaluate's test draws the committee's parity plot
    path.write_text(yaml.safe_dump(cfg))
    return path


def _leaves(model_dir) -> list[np.ndarray]:
    from nnpes.potential import load_potential

    return [np.asarray(x) for x in jax.tree_util.tree_leaves(load_potential(model_dir).params)]


@pytest.fixture(scope="module")
def committee_run(data_dir, tmp_path_factory):  # noqa: F811
    """``nnpes train CFG --committee 2`` through the CLI; returns (run_dir, config path, stdout)."""
    from nnpes.cli.main import main

    tmp = tmp_path_factory.mktemp("committee")
    cfg = _write_config(data_dir, tmp / "cfg.yaml")
    run_dir = tmp / "run"
    assert main(["train", str(cfg), "--committee", "2", "--run-dir", str(run_dir)]) == 0
    return run_dir, cfg


def test_committee_cli_trains_members_with_stress_and_saves_a_calibrated_committee(committee_run, data_dir):  # noqa: F811
    from nnpes.active.ensemble import load_ensemble
    from nnpes.training.evaluate import evaluate
    from nnpes.data import read_structures

    run_dir, _ = committee_run
    members = [run_dir / "members" / str(k) for k in range(2)]
    # each member is a full single-model run: its own seed, validation, stress in the loss
    for k, member in enumerate(members):
        assert yaml.safe_load((member / "config.yaml").read_text())["training"]["seed"] == k
        header = (member / "metrics.csv").read_text().splitlines()[0].split(",")
        row = dict(zip(header, (member / "metrics.csv").read_text().splitlines()[-1].split(",")))
        assert np.isfinite(float(row["valid_s_mae_meV_A3"])) and float(row["train_loss_stress"]) > 0
        assert (member / "model" / "params.msgpack").exists()
    a, b = (_leaves(m / "model") for m in members)
    assert any(not np.array_equal(x, y) for x, y in zip(a, b))  # different members

    ens = load_ensemble(run_dir / "committee")
    assert ens.size == 2 and ens.std_scale > 0 and ens.std_scale != 1.0  # calibrated on the validation split
    for k in range(2):
        for x, y in zip(jax.tree_util.tree_leaves(ens.member(k).params), _leaves(members[k] / "model")):
            np.testing.assert_array_equal(np.asarray(x), y)

    m = json.loads((run_dir / "test_metrics.json").read_text())
    assert {"energy_per_atom_meV", "forces_meV_per_A", "stress_meV_per_A3"} <= set(m)
    u = m["uncertainty"]
    assert UNCERTAINTY_KEYS <= set(u)
    assert u["committee_size"] == 2 and u["std_scale"] == pytest.approx(ens.std_scale)
    assert u["calibrated_on"] == {"split": "valid", "n_structures": 4}
    assert u["mean_force_std_meV_per_A"] > 0 and 0 <= u["force_components_within_1std"] <= 1
    assert u["force_components_within_1std"] <= u["force_components_within_2std"]
    assert -1 <= u["spearman_max_force_std_vs_max_force_error"] <= 1
    # the committee mean's errors, not a member's
    test = read_structures(str(data_dir / "cu_test.extxyz"))
    again = evaluate(ens, test)
    np.testing.assert_allclose(again["forces_meV_per_A"]["mae"], m["forces_meV_per_A"]["mae"], rtol=1e-9)
    single = json.loads((members[0] / "test_metrics.json").read_text())
    assert single["forces_meV_per_A"]["mae"] != m["forces_meV_per_A"]["mae"]
    log = (run_dir / "train.log").read_text()
    assert "std_scale" in log and "calibration" in log


def test_committee_warns_below_its_members_shortest_distances(committee_run, data_dir):  # noqa: F811
    """Issue 15 for committees: the saved committee carries its members' shortest distances per pair
    (the smaller of the two where they differ) and ``predict`` warns below them."""
    from nnpes.active.ensemble import load_ensemble
    from nnpes.data import read_structures
    from nnpes.graph.distances import ShortDistanceWarning, merge_shortest
    from nnpes.potential import load_potential

    run_dir, _ = committee_run
    ens = load_ensemble(run_dir / "committee")
    members = [load_potential(run_dir / "members" / str(k) / "model").shortest_distances for k in range(2)]
    assert ens.shortest_distances == merge_shortest(members) and "Cu-Cu" in ens.shortest_distances
    atoms = read_structures(str(data_dir / "cu_test.extxyz"))[0]
    d = atoms.get_distance(0, 1, mic=True, vector=True)
    atoms.positions[1] = atoms.positions[0] + d / np.linalg.norm(d) * 0.9 * ens.shortest_distances["Cu-Cu"]
    with pytest.warns(ShortDistanceWarning, match=r"atoms 0 and 1 \(Cu-Cu\)"):
        ens.predict(atoms)


def test_evaluate_cli_reports_a_committee_with_its_uncertainty(committee_run, data_dir, tmp_path, capsys):  # noqa: F811
    from nnpes.cli.main import main

    run_dir, _ = committee_run
    expected = json.loads((run_dir / "test_metrics.json").read_text())
    for target in (run_dir, run_dir / "committee"):  # the run directory or the saved committee
        out, png = tmp_path / f"{target.name}.json", tmp_path / f"{target.name}.png"
        assert main(["evaluate", str(target), str(data_dir / "cu_test.extxyz"), "--out", str(out), "--plot", str(png)]) == 0
        assert png.stat().st_size > 1000  # the committee mean's parity plot
        printed = capsys.readouterr().out
        assert "committee of 2 members" in printed and "force std" in printed and "within 1σ" in printed
        assert "Spearman" in printed and "stress" in printed
        m = json.loads(out.read_text())
        assert UNCERTAINTY_KEYS - {"calibrated_on"} <= set(m["uncertainty"])
        for key in ("mean_force_std_meV_per_A", "force_components_within_1std", "std_scale"):
            assert m["uncertainty"][key] == pytest.approx(expected["uncertainty"][key], rel=1e-9)
        assert m["forces_meV_per_A"]["mae"] == pytest.approx(expected["forces_meV_per_A"]["mae"], rel=1e-9)


def test_committee_resume_skips_the_finished_member_and_resumes_the_interrupted_one(
        committee_run, data_dir, tmp_path, monkeypatch):  # noqa: F811
    """Member 1 is interrupted after its first epoch; --resume leaves member 0 alone (its files keep
    their mtimes), resumes member 1 from its checkpoint and ends with the uninterrupted committee."""
    from nnpes.cli.main import main
    from nnpes.training import trainer

    cfg = _write_config(data_dir, tmp_path / "cfg.yaml")
    run_dir = tmp_path / "run"
    report = trainer._report_epoch

    def interrupted(run, trackers, epoch, *args):
        if run.run_dir.name == "1" and epoch == 1:
            raise KeyboardInterrupt("stopped in member 1")
        return report(run, trackers, epoch, *args)

    monkeypatch.setattr(trainer, "_report_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(cfg), "--committee", "2", "--run-dir", str(run_dir)])
    monkeypatch.setattr(trainer, "_report_epoch", report)
    assert not (run_dir / "committee").exists() and (run_dir / "members/1/latest.ckpt").exists()
    # without --resume the directory is refused
    assert main(["train", str(cfg), "--committee", "2", "--run-dir", str(run_dir)]) == 2

    member0 = sorted(p for p in (run_dir / "members/0").rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in member0}
    assert main(["train", str(cfg), "--committee", "2", "--run-dir", str(run_dir), "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in member0} == mtimes
    assert sorted(p for p in (run_dir / "members/0").rglob("*") if p.is_file()) == member0
    log = (run_dir / "train.log").read_text()
    assert "member 0: finished before" in log and "member 1: resuming" in log
    assert "resumed from" in (run_dir / "members/1/train.log").read_text()
    # a resumed run ends exactly where the uninterrupted one does
    for k in range(2):
        for x, y in zip(_leaves(run_dir / f"members/{k}/model"), _leaves(committee_run[0] / f"members/{k}/model")):
            np.testing.assert_array_equal(x, y)
    assert (run_dir / "committee" / "ensemble.json").exists() and (run_dir / "test_metrics.json").exists()


def test_bootstrap_members_resample_the_train_split_only(data_dir, tmp_path, monkeypatch):  # noqa: F811
    from nnpes.cli.main import main
    from nnpes.config import ConfigError, load_config
    from nnpes.training import trainer
    from nnpes.training.data import load_splits

    with pytest.raises(ConfigError, match="training.committee"):
        load_config(_config(data_dir, committee=0))
    seen = []  # positions of every structure in each member's training loader
    make_loader = trainer.make_loader

    def recording(graphs, tcfg, batch_size, shuffle, seed):
        if shuffle:
            seen.append([np.asarray(g.nodes["positions"]) for g in graphs])
        return make_loader(graphs, tcfg, batch_size, shuffle, seed)

    monkeypatch.setattr(trainer, "make_loader", recording)
    cfg = _write_config(data_dir, tmp_path / "cfg.yaml", max_epochs=1)
    assert main(["train", str(cfg), "--committee", "2", "--committee-mode", "bootstrap",
                 "--run-dir", str(tmp_path / "run")]) == 0
    splits = load_splits(load_config(str(cfg)).data, ["Cu", "Al"])
    key = lambda pos: pos.round(10).tobytes()  # noqa: E731
    train = {key(a.positions): i for i, a in enumerate(splits.train)}
    held_out = {key(a.positions) for a in splits.valid + splits.test}
    assert len(seen) == 2
    drawn = []
    for frames in seen:
        keys = [key(p) for p in frames]
        assert len(keys) == len(train) and not held_out & set(keys)  # never a valid or test frame
        assert set(keys) <= set(train) and len(set(keys)) < len(keys)  # resampled with replacement
        drawn.append(sorted(train[k] for k in keys))
    assert drawn[0] != drawn[1]
    for k in range(2):
        member = yaml.safe_load((tmp_path / f"run/members/{k}/config.yaml").read_text())
        assert member["data"]["bootstrap_seed"] == k and "bootstrap" in (tmp_path / f"run/members/{k}/train.log").read_text()
    assert (tmp_path / "run/committee/ensemble.json").exists()  # members share the normalisation
