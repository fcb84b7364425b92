"""The research notebooks run top to bottom (nbclient) with small settings injected after their
``parameters`` cell; a notebook that raises (its own asserts included) fails the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

SMALL = {
    "01_quickstart.ipynb": dict(N_TRAIN=16, N_VALID=4, N_TEST=16, EPOCHS=2, BATCH_SIZE=4,
                                MODEL={"name": "nequip", "num_layers": 1, "features": 4, "radial_mlp_width": 8,
                                       "num_bessel": 4, "cutoff": 4.0}),
    "02_custom_md.ipynb": dict(MODEL_DIR="does-not-exist", TRAIN_IF_MISSING=False, N_BLOCKS=4, BLOCK=10,
                               MODEL={"name": "nequip", "num_layers": 1, "features": 4, "radial_mlp_width": 8,
                                      "num_bessel": 4, "cutoff": 4.0}),
    "03_active_learning.ipynb": dict(ORACLE="emt", MOLECULE="CH3CH2OH", ITERATIONS=1, COMMITTEE=2, EPOCHS=2,
                                     INITIAL_PER_START=4, STEPS=20, TEMPERATURES=[300.0], MAX_PER_ITERATION=2,
                                     MODEL={"name": "behler_parrinello", "hidden": [4], "cutoff": 4.0}),
    "04_physics_checks.ipynb": dict(N_ANGLES=7, FD_STEPS=[1e-2, 1e-3, 1e-4],
                                    MODEL={"name": "nequip", "num_layers": 1, "features": 4, "radial_mlp_width": 8,
                                           "num_bessel": 4, "cutoff": 4.0}),
}


def test_every_notebook_is_covered_and_has_no_outputs():
    found = sorted(p.name for p in NOTEBOOKS.glob("0*.ipynb"))
    assert found == sorted(SMALL)
    for name in found:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1, name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{name}: commit notebooks without outputs"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, tmp_path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    params = dict(SMALL[name])
    if "RUN_DIR" in "".join(c.source for c in nb.cells if c.cell_type == "code"):
        params["RUN_DIR"] = str(tmp_path / "run")
    k = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(k + 1, injected)
    env_backup = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(NOTEBOOKS)}})
        client.execute()
    finally:
        if env_backup is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = env_backup
