"""``nnpes export``: the serialized ``jax.export`` artifact runs in a process that cannot import
nnpes, through docs/load_exported.py and on padded batches made by nnpes, and gives
``Potential.predict``'s energies, forces and stress (float32 and float64, periodic and not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from ase.io import read, write

import _toy_model  # noqa: F401  (registers "_toy")
from nnpes import keys
from nnpes.cli.main import main
from nnpes.potential import build_potential
from nnpes.potential.export import ARTIFACT_FILE, INPUTS, META_FILE, export_potential
from nnpes.testing import make_structure

EXAMPLE = Path(__file__).parents[1] / "docs" / "load_exported.py"
TOY = {"name": "_toy", "elements": ["H", "C", "O"], "cutoff": 3.0}

# Runs with jax, numpy and ase only: importing nnpes fails there.
CHILD = r"""
import json, runpy, sys
sys.modules["nnpes"] = None  # `import nnpes` raises ImportError from here on
import jax
import numpy as np
from ase.io import read

structures, out_file, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
example = runpy.run_path(EXAMPLE)
out = {}
for d in dirs:
    predict = example["load"](d)  # float64 switches x64 on: float32 comes first
    for k, atoms in enumerate(read(structures, index=":")):
        for name, value in predict(atoms).items():
            out[f"{d}/example/{k}/{name}"] = value
    names = [a["name"] for a in json.load(open(f"{d}/export.json"))["inputs"]]
    batch = np.load(f"{d}/batch.npz")
    exported = jax.export.deserialize(bytearray(open(f"{d}/energy_forces_stress.jaxexport", "rb").read()))
    for name, value in exported.call(*[batch[n] for n in names]).items():
        out[f"{d}/batch/{name}"] = np.asarray(value)
assert not any(m.startswith("nnpes") for m, v in sys.modules.items() if v is not None)
np.savez(out_file, **out)
"""


def _structures():
    return [make_structure("small_cell", 1), make_structure("molecule", 2)]  # periodic with self-images, not periodic


def _batch_arrays(pot, structures) -> dict:
    """The exported function's inputs for a padded batch of ``structures``, as nnpes pads it."""
    g = pot.device_graph(structures)
    arrays = {**g.nodes, **g.edges, **g.globals, "senders": g.senders, "receivers": g.receivers,
              "n_node": g.n_node, "n_edge": g.n_edge}
    return {a.name: np.asarray(arrays[a.name]) for a in INPUTS}


def _assert_close(value, ref, dtype, what):
    ref = np.asarray(ref)
    scale = max(float(np.max(np.abs(ref))), 1e-3)
    tol = 2e-6 if dtype == "float32" else 1e-10
    err = float(np.max(np.abs(np.asarray(value, np.float64) - ref))) / scale
    assert err < tol, f"{what}: relative error {err:.2e} ≥ {tol}"


def test_exported_model_runs_with_jax_alone_and_matches_predict(tmp_path):
    write(tmp_path / "structures.extxyz", _structures())
    structures = read(tmp_path / "structures.extxyz", index=":")  # as the child reads them (8 decimals)
    pots = {}
    for dtype in ("float32", "float64"):
        pot = build_potential({**TOY, "dtype": dtype}, seed=3)
        pot.save(tmp_path / f"model_{dtype}")
        assert main(["export", str(tmp_path / f"model_{dtype}"), str(tmp_path / dtype), "--platforms", "cpu"]) == 0
        np.savez(tmp_path / dtype / "batch.npz", **_batch_arrays(pot, structures))
        pots[dtype] = pot

    meta = json.loads((tmp_path / "float32" / META_FILE).read_text())
    assert meta["artifact"] == ARTIFACT_FILE and meta["dtype"] == "float32" and meta["cutoff"] == 3.0
    assert meta["elements"] == ["H", "C", "O"] and meta["atomic_numbers"] == [1, 6, 8] and meta["platforms"] == ["cpu"]
    assert [a["name"] for a in meta["inputs"]] == ["positions", "numbers", "senders", "receivers", "shifts",
                                                   "cell", "pbc", "n_node", "n_edge"]
    assert meta["inputs"][0] == {"name": "positions", "shape": ["n_node", 3], "dtype": "float32", "unit": "Å",
                                 "description": meta["inputs"][0]["description"]}
    assert {a["name"]: a["unit"] for a in meta["outputs"]} == {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "energies": "eV"}
    assert "padding graph" in meta["padding"] and meta["card"]["model"]["name"] == "_toy"

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [p for p in sys.path if p and not (Path(p) / "nnpes").exists()]  # jax, ase, flatbuffers; not nnpes
    env["PYTHONPATH"] = os.pathsep.join(paths)
    child = CHILD.replace("EXAMPLE", repr(str(EXAMPLE)))
    proc = subprocess.run([sys.executable, "-c", child, str(tmp_path / "structures.extxyz"), str(tmp_path / "out.npz"),
                           str(tmp_path / "float32"), str(tmp_path / "float64")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")

    for dtype, pot in pots.items():
        d = str(tmp_path / dtype)
        refs = pot.predict(structures, compute_stress=True)
        for k, (atoms, ref) in enumerate(zip(structures, refs)):
            for name in (keys.ENERGY, keys.FORCES, keys.ENERGIES) + ((keys.STRESS,) if atoms.pbc.all() else ()):
                _assert_close(out[f"{d}/example/{k}/{name}"], ref[name], dtype, f"{dtype} example {k} {name}")
            if not atoms.pbc.any():
                assert not np.any(out[f"{d}/example/{k}/stress"])
        node = 0
        for k, (atoms, ref) in enumerate(zip(structures, refs)):
            n = len(atoms)
            _assert_close(out[f"{d}/batch/energy"][k], ref["energy"], dtype, f"{dtype} batch {k} energy")
            _assert_close(out[f"{d}/batch/forces"][node:node + n], ref["forces"], dtype, f"{dtype} batch {k} forces")
            if atoms.pbc.all():
                _assert_close(out[f"{d}/batch/stress"][k], ref["stress"], dtype, f"{dtype} batch {k} stress")
            node += n
        assert not np.any(out[f"{d}/batch/forces"][node:]) and not np.any(out[f"{d}/batch/energy"][len(structures):])


def test_nequip_exports_with_symbolic_sizes(tmp_path):
    """NequIP chooses its blocked path by the number of edges: with a symbolic edge count it must
    take the unblocked one (valid for every size) instead of failing. (The numbers of an export
    are checked on the toy model above.)"""
    pot = build_potential({**TOY, "name": "nequip", "features": 4, "num_layers": 1, "radial_mlp_width": 8})
    export_potential(pot, tmp_path, platforms=["cpu", "cuda"])
    exported = jax.export.deserialize(bytearray((tmp_path / ARTIFACT_FILE).read_bytes()))
    assert exported.platforms == ("cpu", "cuda")
    sizes = {a.name: a.shape for a in INPUTS}
    for spec, aval in zip(INPUTS, exported.in_avals):
        assert [str(d) for d in aval.shape] == [str(d) for d in sizes[spec.name]], spec.name


def test_export_of_a_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none"), str(tmp_path / "out")]) == 2
    assert "no saved potential" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_example_imports_only_jax_numpy_and_ase():
    script = EXAMPLE
    import ast

    tree = ast.parse(script.read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules <= {"json", "sys", "pathlib", "jax", "numpy", "ase"}, modules
    assert len(script.read_text().splitlines()) <= 60
