"""Models people can share: the model card in every saved model (``nnpes.potential.card``),
``nnpes info MODEL``, a short ``repr(Potential)`` and saved files readable by others."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml

import _toy_model  # noqa: F401  (registers "_toy")
from nnpes.cli.main import main
from nnpes.files import atomic_write, current_umask
from nnpes.graph.distances import shortest_distances
from nnpes.potential import CARD_FILE, ModelCard, build_potential, load_potential


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write(tmp_path / "new", b"x")
        (tmp_path / "old").write_bytes(b"")
        os.chmod(tmp_path / "old", 0o600)
        atomic_write(tmp_path / "old", b"y")  # replacing a file: the new one gets the default mode too
    finally:
        os.umask(old)
    assert current_umask() == old
    for name in ("new", "old"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# ---- the model card --------------------------------------------------------------------------

LEGACY = Path(__file__).parent / "fixtures" / "legacy_b373985"
TOY = {"name": "_toy", "elements": ["H", "C", "O"], "cutoff": 3.0}


@pytest.fixture(scope="module")
def toy():
    return build_potential(TOY, seed=0)


def test_saved_model_has_a_card_that_loads_back(toy, tmp_path):
    old = os.umask(0o022)
    try:
        toy.save(tmp_path / "m")
    finally:
        os.umask(old)
    raw = yaml.safe_load((tmp_path / "m" / CARD_FILE).read_text())
    import flax
    import jax
    import jaxlib

    assert raw["versions"]["jax"] == jax.__version__ and raw["versions"]["jaxlib"] == jaxlib.__version__
    assert raw["versions"]["flax"] == flax.__version__ and set(raw["versions"]) == {"nnpes", "jax", "jaxlib", "flax", "e3nn-jax"}
    created = datetime.datetime.fromisoformat(raw["created"])
    assert created.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()) < 600
    n = 3 * 3 + 3 + 3 + 3 + 1  # toy w, a; EnergyModel e0, scale, offset
    assert raw["model"] == {"name": "_toy", "elements": ["H", "C", "O"], "cutoff": 3.0, "dtype": "float32", "n_parameters": n}
    assert raw["units"] == {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "lengths": "Å"}
    assert raw["data"] is None and raw["test_metrics"] is None
    for name in ("card.yaml", "config.yaml", "params.msgpack"):
        assert stat.S_IMODE((tmp_path / "m" / name).stat().st_mode) == 0o644, name

    loaded = load_potential(tmp_path / "m")
    assert loaded.card == toy.card == ModelCard.from_dict(raw)
    loaded.save(tmp_path / "again")  # a loaded model keeps its card when saved again
    assert ModelCard.load(tmp_path / "again") == loaded.card
    assert loaded.replace(loaded.params).card is None  # new parameters: the card no longer describes them


def test_card_ignores_newer_keys_and_a_bad_card_does_not_block_loading(toy, tmp_path):
    d = ModelCard.of(toy).to_dict()
    d["from_the_future"] = 1
    d["model"]["also_new"] = 2
    assert ModelCard.from_dict(d).model.n_parameters == toy.n_parameters
    with pytest.raises(ValueError, match="model card"):
        ModelCard.from_dict({"created": "x"})
    toy.save(tmp_path / "m")
    (tmp_path / "m" / CARD_FILE).write_text("[not, a, card]")
    with pytest.warns(UserWarning, match="ignoring the model card"):
        pot = load_potential(tmp_path / "m")
    assert pot.card is None


def test_old_model_without_card_loads_and_info_says_so(capsys):
    pot = load_potential(LEGACY / "potential")
    assert pot.card is None
    assert main(["info", str(LEGACY / "run")]) == 0  # a run directory: its model/
    out = capsys.readouterr().out
    assert "nequip, elements Cu, cutoff 3.5 Å, float64, 123 parameters" in out
    assert "no model card" in out
    assert main(["info", str(LEGACY)]) == 2  # neither a model nor a run
    assert "neither a saved model nor a run directory" in capsys.readouterr().err


def test_repr_is_one_short_line(toy):
    assert repr(toy) == f"Potential(_toy, elements=[H, C, O], cutoff=3.0 Å, {toy.n_parameters} parameters, float32)"
    from ase.data import chemical_symbols

    big = build_potential({**TOY, "elements": chemical_symbols[1:33], "dtype": "float64"})
    assert big.n_parameters == 32 * 32 + 3 * 32 + 1
    assert repr(big) == f"Potential(_toy, elements=[{', '.join(big.elements)}], cutoff=3.0 Å, 1,121 parameters, float64)"


# ---- a trained model's card: data and test errors --------------------------------------------


def test_trained_model_card_has_data_and_test_errors_and_info_shows_them(tmp_path, capsys):
    from ase.io import write

    from nnpes.testing import labelled_dataset
    from nnpes.training import train

    write(tmp_path / "hco.extxyz", labelled_dataset(1, 8))  # EMT energies and forces
    write(tmp_path / "hco_test.extxyz", labelled_dataset(2, 3))
    cfg = {"data": {"train": str(tmp_path / "hco.extxyz"), "test": str(tmp_path / "hco_test.extxyz"), "n_valid": 2},
           "model": TOY,
           "training": {"max_epochs": 1, "batch_size": 8, "stress_weight": 0.0, "progress": False},  # one compile
           "output": {"plots": False}}
    result = train(cfg, tmp_path / "run", quiet=True)
    card = load_potential(tmp_path / "run" / "model").card
    sha = {p: hashlib.sha256((tmp_path / p).read_bytes()).hexdigest() for p in ("hco.extxyz", "hco_test.extxyz")}
    assert [(f.role, Path(f.path).name, f.sha256) for f in card.data.files] == [
        ("train", "hco.extxyz", sha["hco.extxyz"]), ("test", "hco_test.extxyz", sha["hco_test.extxyz"])]
    assert card.data.frames == {"train": 6, "valid": 2, "test": 3} and card.data.energy_unit == "eV"
    assert card.test_split == "test" and card.test_metrics == result.test_metrics
    assert card.model.elements == ["H", "C", "O"] and card.model.n_parameters == 19
    from nnpes.config import load_config
    from nnpes.graph import atoms_to_graph
    from nnpes.training.data import load_splits

    train_split = load_splits(load_config(tmp_path / "run" / "config.yaml").data, TOY["elements"]).train
    assert card.data.shortest_distances == shortest_distances(
        [atoms_to_graph(a, TOY["cutoff"]) for a in train_split], TOY["elements"])
    assert set(card.data.shortest_distances) <= {"H-H", "H-C", "H-O", "C-C", "C-O", "O-O"}
    closest = min((a.get_all_distances(mic=True) + 9 * np.eye(len(a))).min() for a in train_split)  # ase, independently
    assert min(card.data.shortest_distances.values()) == pytest.approx(closest, abs=1e-4)

    assert main(["info", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    m = result.test_metrics
    assert "frames: train 6, valid 2, test 3" in out
    assert "distances in the training data (Å; predict warns below): " + ", ".join(f"{k} {v:.3f}" for k, v in card.data.shortest_distances.items()) in out
    assert re.search(rf"^ +test +{re.escape(str(tmp_path / 'hco_test.extxyz'))} +sha256 {sha['hco_test.extxyz'][:12]}$", out, re.M)
    assert f"{m['energy_per_atom_meV']['mae']:9.3f}" in out and "meV/atom" in out and "meV/Å" in out
    assert "on the test set" in out and "jax " in out and "created   " in out


def test_fine_tuned_card_carries_its_lineage_and_the_run_keeps_its_parent(tmp_path, capsys):
    """A fine-tune's card holds its parent's card (``nnpes info`` lists the lineage) and the
    shortest distances of both datasets; the run copies its parent into ``parent/``, so a resume
    works after the original is gone (it once needed ``model.init_from`` to still be there)."""
    import shutil

    from ase.io import write

    from nnpes.graph.distances import merge_shortest
    from nnpes.testing import labelled_dataset
    from nnpes.training import train

    write(tmp_path / "a.extxyz", labelled_dataset(1, 6))
    write(tmp_path / "b.extxyz", labelled_dataset(7, 6))
    cfg = {"data": {"train": str(tmp_path / "a.extxyz"), "n_valid": 2}, "model": TOY,
           "training": {"max_epochs": 1, "batch_size": 4, "stress_weight": 0.0, "progress": False},
           "output": {"plots": False}}
    train(cfg, tmp_path / "first", quiet=True)
    parent = load_potential(tmp_path / "first" / "model").card
    child_cfg = {**cfg, "data": {**cfg["data"], "train": str(tmp_path / "b.extxyz")},
                 "model": {**TOY, "init_from": str(tmp_path / "first")}}
    train(child_cfg, tmp_path / "child", quiet=True)
    shutil.rmtree(tmp_path / "first")  # the parent is gone: the resume builds from the run's copy
    child_cfg["training"] = {**cfg["training"], "max_epochs": 2}
    assert train(child_cfg, tmp_path / "child", resume=True, quiet=True).epochs == 2
    child = load_potential(tmp_path / "child" / "model")
    assert child.card.parent.path == str(tmp_path / "first") and child.card.parent.card == parent
    assert [c.created for c in child.card.lineage()] == [child.card.created, parent.created]
    both = merge_shortest([parent.data.shortest_distances, child.card.data.shortest_distances])
    assert child.shortest_distances == both != child.card.data.shortest_distances
    assert main(["info", str(tmp_path / "child")]) == 0
    out = capsys.readouterr().out
    assert f"parent    {tmp_path / 'first'}: _toy, created {parent.created}, trained on {tmp_path / 'a.extxyz'}" in out
