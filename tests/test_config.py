"""Top-level config: strict keys and types with suggestions, overrides, path resolution, the
template, every shipped config, and the `nnpes config` command. No model is compiled here."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from nnpes.workflows.quickstart import default_config
from nnpes.config import check_config, load_config, template
from nnpes.config.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]
# training configs (other shipped configs, e.g. active learning, have their own sections and tests)
CONFIGS = [p for p in sorted((REPO / "configs").glob("*.yaml"))
           if set(yaml.safe_load(p.read_text()) or {}) <= {"data", "model", "training", "output"}]
CONFIGS.append(default_config())  # the quickstart's, shipped as package data


def _base(tmp_path):
    (tmp_path / "d.extxyz").write_text("")
    return {
        "data": {"train": "d.extxyz"},
        "model": {"name": "nequip", "elements": ["H", "O"], "cutoff": 4.0, "num_layers": 2},
        "training": {"lr": 1e-3},
    }


def _write(tmp_path, cfg, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_unknown_key_names_it_and_suggests(tmp_path):
    cfg = _base(tmp_path)
    cfg["training"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key training\.'learning_rate'.*did you mean"):
        load_config(_write(tmp_path, cfg))
    cfg = _base(tmp_path)
    cfg["model"]["num_layer"] = 3
    with pytest.raises(ConfigError, match=r"num_layer.*did you mean 'num_layers'"):
        load_config(cfg)
    cfg = _base(tmp_path)
    cfg["trainig"] = {}
    with pytest.raises(ConfigError, match=r"unknown section 'trainig'; did you mean 'training'"):
        load_config(cfg)


def test_wrong_types_and_values(tmp_path):
    for section, key, value, pattern in [
        ("training", "batch_size", "five", r"training\.batch_size: expected an integer"),
        ("training", "optimizer", "adma", r"training\.optimizer: 'adma' is not one of .*did you mean 'adam'"),
        ("training", "ema_decay", 1.5, r"training\.ema_decay must be in \[0, 1\)"),
        ("training", "weight_decay", 0.01, r"optimizer: adamw"),
        ("data", "energy_unit", "kcal/mole", r"data\.energy_unit: 'kcal/mole'.*did you mean 'kcal/mol'"),
        ("data", "n_valid", 1.5, r"data\.n_valid: a float is a fraction"),
        ("model", "elements", ["H", "Xx"], r"model\.elements: unknown element 'Xx'"),
    ]:
        cfg = _base(tmp_path)
        cfg[section][key] = value
        with pytest.raises(ConfigError, match=pattern):
            load_config(cfg)


def test_overrides_and_relative_paths(tmp_path):
    sub = tmp_path / "cfgs"
    sub.mkdir()
    cfg = _base(tmp_path)
    cfg["data"]["train"] = "../d.extxyz"
    path = _write(sub, cfg)
    c = check_config(path, ["training.lr=3e-4", "training.batch_size=7", "model.elements=[H, C, O]"])
    assert c.data.train == str((tmp_path / "d.extxyz").resolve())  # relative to the config's directory
    assert c.training.lr == 3e-4 and c.training.batch_size == 7 and c.model.elements == ["H", "C", "O"]
    assert c.raw["training"]["lr"] == 3e-4  # what is written to the run directory
    with pytest.raises(ConfigError, match="unknown section 'trianing'"):
        load_config(path, ["trianing.lr=1"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["training.lr"])
    cfg["data"]["test"] = "nope.xyz"
    with pytest.raises(FileNotFoundError, match=r"data\.test: file .*nope\.xyz"):
        check_config(_write(sub, cfg))


def test_template_parses_back_with_every_key(tmp_path):
    for model in ("nequip", "behler_parrinello"):
        text = template(model, ["H", "C"])
        data = yaml.safe_load(text)
        assert data["model"]["name"] == model
        (tmp_path / "train.xyz").write_text("")
        c = check_config(_write(tmp_path, data, f"{model}.yaml"))
        assert c.model.name == model
        # every training key has a line in the template
        import dataclasses

        from nnpes.config import TrainingConfig

        assert set(data["training"]) == {f.name for f in dataclasses.fields(TrainingConfig)}


def test_every_template_key_has_a_comment_and_stress_weight_states_its_scale():
    import re

    from nnpes.models import MODELS, import_builtin_models

    import_builtin_models()
    for model in sorted(m for m in MODELS if not m.startswith("_")):
        text = template(model, ["H", "C"])
        keys = [line for line in text.splitlines() if re.match(r"^ +\w+:", line)]
        assert len(keys) > 40
        bare = [line.strip() for line in keys if not re.search(r" # \S", line)]
        assert not bare, f"{model}: keys without a comment: {bare}"
    stress = next(line for line in text.splitlines() if line.strip().startswith("stress_weight:"))
    assert "(eV/Å³)²" in stress and "9 stress components" in stress


def test_trackers_need_their_package_at_load(tmp_path, monkeypatch):
    import types

    cfg = _base(tmp_path)
    assert load_config(cfg).output.wandb is False and load_config(cfg).output.tensorboard is False
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed: import fails
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    for key, value, pattern in (("wandb", {"project": "cu"}, r"output\.wandb .* wandb is not installed: pip install wandb"),
                                ("wandb", True, "wandb is not installed"),
                                ("tensorboard", True, r"output\.tensorboard .*nnpes\[tensorboard\]")):
        with pytest.raises(ConfigError, match=pattern):
            load_config({**cfg, "output": {key: value}})
    monkeypatch.setitem(sys.modules, "wandb", types.ModuleType("wandb"))
    assert load_config({**cfg, "output": {"wandb": {"project": "cu", "tags": ["a"]}}}).output.wandb == {
        "project": "cu", "tags": ["a"]}
    with pytest.raises(ConfigError, match=r"output\.wandb: expected"):
        load_config({**cfg, "output": {"wandb": "cu"}})


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_check(path):
    cfg = load_config(path)
    assert cfg.model.elements
    data_present = all(Path(p).exists() for p in cfg.data.train_files)
    if path.name == "quickstart.yaml":
        return  # its data is made by `nnpes quickstart`
    if not data_present:
        pytest.skip(f"shared data not present: {cfg.data.train_files}")
    check_config(path)


def test_config_cli(tmp_path, capsys):
    from nnpes.cli.main import main

    assert main(["config", "template", "behler_parrinello", "--elements", "Si"]) == 0
    out = capsys.readouterr().out
    assert "name: behler_parrinello" in out and "# peak learning rate" in out
    good = _write(tmp_path, _base(tmp_path))
    assert main(["config", "check", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    cfg = _base(tmp_path)
    cfg["training"]["bach_size"] = 3
    assert main(["config", "check", str(_write(tmp_path, cfg, "bad.yaml"))]) == 2
    err = capsys.readouterr().err
    assert "bach_size" in err and "batch_size" in err and "Traceback" not in err


def test_a_weight_schedule_stage_keeps_what_it_does_not_set():
    """Each key of the schedule comes from the last stage begun that sets it: a third stage that
    sets only w_F keeps the second's w_E and lr factor."""
    from nnpes.config.training import TrainingConfig, WeightStage

    t = TrainingConfig(energy_weight=1.0, forces_weight=100.0,
                       weight_schedule=[WeightStage(epoch=5, energy_weight=1000.0, lr_factor=0.1),
                                        WeightStage(epoch=8, forces_weight=10.0)])
    assert t.loss_weights(4) == {"energy": 1.0, "forces": 100.0, "stress": 0.0} and t.lr_factor(4) == 1.0
    assert t.loss_weights(5) == {"energy": 1000.0, "forces": 100.0, "stress": 0.0} and t.lr_factor(7) == 0.1
    assert t.loss_weights(9) == {"energy": 1000.0, "forces": 10.0, "stress": 0.0} and t.lr_factor(9) == 0.1
    assert [e for e in range(10) if t.stage_begins(e)] == [5, 8]
