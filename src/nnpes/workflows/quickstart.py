"""``nnpes quickstart``: make ethanol data with a real oracle (GFN2-xTB), train a small NequIP,
evaluate it, and say where everything is. The config ships with the package
(``nnpes/workflows/quickstart.yaml``), so the quickstart works from any install."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

DATA_FILE = "ethanol_xtb.extxyz"


def default_config() -> Path:
    """The quickstart config shipped as package data."""
    return Path(__file__).resolve().with_name("quickstart.yaml")


def generate_ethanol(path: str | Path, n_frames: int = 300, *, temperature_K: float = 500.0,
                     timestep_fs: float = 0.5, stride: int = 10, equilibrate: int = 200, seed: int = 0,
                     log=print) -> Path:
    """Langevin MD of one ethanol molecule with GFN2-xTB (tblite) at ``temperature_K``; every
    ``stride``-th step after ``equilibrate`` steps is written with its xTB energy (eV) and forces
    (eV/Å) to extxyz ``path`` (written to a temp file and renamed, so a half file never remains)."""
    from ase import units
    from ase.build import molecule
    from ase.constraints import FixCom
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution as vd

    from nnpes.oracle import snapshot, tblite_oracle

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    atoms = molecule("CH3CH2OH")
    atoms.calc = tblite_oracle().make_calculator()
    rng = np.random.default_rng(seed)
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution  # ase >= 3.29
    thermalize(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)
    atoms.set_constraint(FixCom())  # no drift of the molecule (ase's recommended way over fixcm)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02 / units.fs,
                   fixcm=False, rng=rng)
    t0 = time.perf_counter()
    dyn.run(equilibrate)
    frames = []
    for k in range(n_frames):
        dyn.run(stride)
        frame = snapshot(atoms)
        frames.append(frame)
        if log and (k + 1) % 50 == 0:
            log(f"  {k + 1}/{n_frames} frames, {time.perf_counter() - t0:.0f} s")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)
    return path


def run(run_dir: str | Path | None = None, *, config=None, n_frames: int = 300, overrides=(), resume=False) -> dict:
    """Generate data (if absent), train, evaluate. Returns the training summary."""
    from nnpes.config import load_config
    from nnpes.training import train

    config = Path(config) if config else default_config()
    cfg = load_config(config, list(overrides))
    run_dir = Path(run_dir or cfg.output.run_dir)
    data = run_dir / DATA_FILE
    if not data.exists():
        print(f"making {n_frames} ethanol frames with GFN2-xTB Langevin MD at 500 K -> {data}")
        t0 = time.perf_counter()
        generate_ethanol(data, n_frames)
        print(f"data done in {time.perf_counter() - t0:.0f} s")
    cfg = load_config(config, [*overrides, f"data.train={data.resolve()}", f"output.run_dir={run_dir}"])
    result = train(cfg, run_dir, resume=resume or (run_dir / "latest.ckpt").exists())
    m = result.test_metrics or {}
    f = (m.get("forces_meV_per_A") or {}).get("mae")
    e = (m.get("energy_per_atom_meV") or {}).get("mae")
    print()
    print(f"trained model:  {result.model}   (nnpes.load_potential(...) or `nnpes evaluate`)")
    if f is not None:
        print(f"test errors:    forces MAE {f:.1f} meV/Å, energy MAE {e:.2f} meV/atom")
    print(f"plots:          {run_dir / 'parity_test.png'}, {run_dir / 'learning_curve.png'}")
    print(f"metrics:        {run_dir / 'metrics.csv'}, {run_dir / 'test_metrics.json'}")
    return result
