"""Files written before the issue-10 layout (nnpes at b373985, see tests/fixtures/make_legacy.py)
still load: a saved potential predicts what it predicted then, and a training run resumes."""

import shutil
from pathlib import Path

import numpy as np
from ase.io import read

import nnpes
import nnpes.graph.stats

LEGACY = Path(__file__).parent / "fixtures" / "legacy_b373985"


def test_old_saved_potential_predicts_as_before():
    pot = nnpes.load_potential(LEGACY / "potential")
    frame = read(LEGACY / "cu4_emt.extxyz", index=0)
    out = pot.predict(frame)
    ref = np.load(LEGACY / "potential_prediction.npz")
    np.testing.assert_allclose(out["energy"], ref["energy"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"], rtol=0, atol=1e-10)


def test_old_training_run_resumes(tmp_path):
    from nnpes.training import train

    for name in ("cu4_emt.extxyz", "train.yaml"):
        shutil.copy(LEGACY / name, tmp_path / name)
    shutil.copytree(LEGACY / "run", tmp_path / "run")
    result = train(str(tmp_path / "train.yaml"), tmp_path / "run", resume=True, quiet=True,
                   overrides=["training.max_epochs=2"])
    assert result.epochs == 2 and result.steps == 2 * 3  # 10 train frames, batches of 4
    assert np.isfinite(result.best_valid_loss)


def test_old_module_path_still_works_with_a_warning():
    import importlib
    import sys
    import warnings

    sys.modules.pop("nnpes.stats", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = importlib.import_module("nnpes.stats")
    assert stats.compute_stats is nnpes.graph.stats.compute_stats
    assert any(issubclass(w.category, DeprecationWarning) and "nnpes.graph.stats" in str(w.message) for w in caught)
