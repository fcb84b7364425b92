"""Training throughput and accuracy at a fixed wall-clock budget (standard NequIP, shipped configs).

    python benchmarks/training.py throughput [--steps 30 --repeats 3] [--only CONFIG ...] [--set KEY=VALUE ...]
    python benchmarks/training.py accuracy [--minutes 8] [--only rmd17_ethanol_nequip ...]

throughput: the jitted training step of ``nnpes.training`` (energy + forces loss, gradient, AMSGrad,
EMA) on padded batches from the config's loader; one warm-up batch (compile), then the median over
--repeats of --steps consecutive steps (``block_until_ready``); s/epoch = steps per epoch × median
step time; ``--only`` takes any config of ``configs/`` and ``--set`` overrides its keys as
``nnpes train --set`` does (the published widths: ``--set model.features=64 --set model.l_max=3``).

accuracy: ``nnpes train CONFIG --set training.max_time=...`` in a subprocess, then the test-set
MAEs next to published NequIP / MACE numbers (those trained for days on a GPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
THROUGHPUT = {"rmd17 aspirin": "rmd17_aspirin_nequip", "3bpa": "3bpa_nequip"}
ACCURACY = ["rmd17_ethanol_nequip", "rmd17_aspirin_nequip", "3bpa_nequip"]
# Published test errors: energy meV per molecule, forces meV/Å.
# rMD17 (MAE): NequIP (Batzner et al. 2022, l=3), MACE (Batatia et al. 2022).
# 3BPA 300 K test set (RMSE): NequIP and MACE from the MACE paper.
PUBLISHED = {
    "rmd17_ethanol_nequip": {"metric": "MAE", "NequIP": (0.4, 2.8), "MACE": (0.4, 2.1)},
    "rmd17_aspirin_nequip": {"metric": "MAE", "NequIP": (2.3, 8.2), "MACE": (2.2, 6.6)},
    "3bpa_nequip": {"metric": "RMSE", "NequIP": (3.3, 10.8), "MACE": (3.0, 8.8)},
}


def throughput(name: str, steps: int, repeats: int, overrides=()) -> dict:
    import jax
    import jax.numpy as jnp

    from nnpes.config import load_config
    from nnpes.graph import atoms_to_graph, to_device
    from nnpes.potential import build_potential
    from nnpes.training import LossOptions, TrainState, lr_schedule, make_optimizer, make_train_step
    from nnpes.training.data import load_splits
    from nnpes.training.trainer import make_loader, n_batches

    cfg = load_config(REPO / "configs" / f"{name}.yaml", list(overrides))
    t = cfg.training
    splits = load_splits(cfg.data, cfg.model.elements)
    graphs = [atoms_to_graph(a, cfg.model.cutoff) for a in splits.train]
    pot = build_potential(cfg.model, seed=0, dataset=splits.train, graphs=graphs)
    loader = make_loader(graphs, t, t.batch_size, True, 0)
    n_steps = n_batches(loader)
    tx = make_optimizer(t, n_steps)
    compiles = []
    step_fn, _ = make_train_step(lambda v, g: pot.energy_forces_stress(v, g, False), tx, LossOptions.of(t),
                                 schedule=lr_schedule(t, n_steps), ema_decay=t.ema_decay or 0.0, on_trace=compiles.append)
    train_step = jax.jit(step_fn)
    dtype = pot.dtype
    state = TrainState.create(pot.params, tx)
    w = {k: jnp.asarray(v, dtype) for k, v in t.loss_weights(0).items()}
    one = jnp.asarray(1.0, dtype)
    loader.set_epoch(0)
    batches = [to_device(b, dtype) for b in loader]
    t0 = time.perf_counter()
    out = train_step(state, batches[0], w, one)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for k in range(steps):
            state, m = train_step(state, batches[k % len(batches)], w, one)
        jax.block_until_ready(m.loss)
        times.append((time.perf_counter() - t0) / steps)
    step = float(np.median(times))
    return {
        "dataset": name, "overrides": list(overrides), "parameters": pot.n_parameters,
        "batch_size": t.batch_size, "steps_per_epoch": n_steps, "compile_s": compile_s,
        "step_ms": 1e3 * step, "structures_per_s": t.batch_size / step, "s_per_epoch": n_steps * step,
        "compiles": len(compiles), "padded_shapes": len(loader.shapes),
    }


def accuracy(name: str, minutes: float) -> dict:
    run_dir = REPO / "runs" / f"bench_{name}"
    cmd = [sys.executable, "-m", "nnpes.cli.main", "train", str(REPO / "configs" / f"{name}.yaml"),
           "--run-dir", str(run_dir), "--set", f"training.max_time={60 * minutes}"]
    if (run_dir / "latest.ckpt").exists():
        cmd.append("--resume")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    m = json.loads(next(p for p in [run_dir / "test_metrics.json", run_dir / "valid_metrics.json"] if p.exists()).read_text())
    rows = list(open(run_dir / "metrics.csv"))
    return {
        "dataset": name, "budget_min": minutes, "wall_s": wall, "epochs": len(rows) - 1,
        "E_mae_meV": m["energy_per_structure_meV"]["mae"], "E_rmse_meV": m["energy_per_structure_meV"]["rmse"],
        "F_mae_meV_A": m["forces_meV_per_A"]["mae"], "F_rmse_meV_A": m["forces_meV_per_A"]["rmse"],
        "published": PUBLISHED[name], "learning_curve": str(run_dir / "learning_curve.png"),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["throughput", "accuracy"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    if a.mode == "throughput":
        labels = {name: label for label, name in THROUGHPUT.items()}
        for name in a.only or THROUGHPUT.values():
            print(json.dumps({"label": labels.get(name, name), **throughput(name, a.steps, a.repeats, a.overrides)}),
                  flush=True)
    else:
        for name in ACCURACY:
            if a.only and name not in a.only:
                continue
            print(json.dumps(accuracy(name, a.minutes)), flush=True)


if __name__ == "__main__":
    main()
