"""Fine-tuning, measured (issue 12 §1): errors on the old and the new test set before and after.

EMT copper (ase.calculators.emt, energies, forces and stress). "Old" data: rattled, strained 32-atom
fcc bulk cells; "new" data: a 4-layer (111) slab with an adatom, rattled, which the old model has
never seen (surfaces). A NequIP (2 layers, 16 channels, r_c 4 Å, float32) is trained on the old set;
then, from its weights, fine-tuned on the new set (`nnpes train --init-from`, lr a tenth), with and
without `training.freeze: [embedding, layer_0]` or `[e0, offset, scale]`, and with the old training
data replayed next to the new (`data.train: [new, old]`); for reference a model trained on the new set from
scratch with the same budget. Each train split: 60 old / 40 new frames, tests: 40 each.

    taskset -c 0 python benchmarks/fine_tune.py --minutes 4
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

MODEL = {"name": "nequip", "elements": ["Cu"], "cutoff": 4.0, "num_layers": 2, "features": 16, "dtype": "float32"}


def _label(atoms):
    atoms.calc = EMT()
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f, stress=s)
    return atoms


def old_frames(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        a.set_cell(a.cell @ (np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))), scale_atoms=True)
        a.rattle(0.08, seed=int(rng.integers(1 << 30)))
        out.append(_label(a))
    return out


def new_frames(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = fcc111("Cu", size=(3, 3, 4), vacuum=6.0, periodic=True)
        add_adsorbate(a, "Cu", 2.0, "fcc")
        a.rattle(0.08, seed=int(rng.integers(1 << 30)))
        out.append(_label(a))
    return out


def config(train, test, run_dir, minutes, lr, **training):
    return {"data": {"train": str(train), "test": str(test), "n_valid": 0.15},
            "model": MODEL,
            "training": {"max_epochs": 100000, "max_time": 60 * minutes, "batch_size": 4, "lr": lr,
                         "stress_weight": 10.0, "progress": False, **training},
            "output": {"run_dir": str(run_dir), "plots": False}}


def errors(model_dir, frames):
    from nnpes.potential import load_potential
    from nnpes.training.evaluate import evaluate

    m = evaluate(load_potential(model_dir), frames)
    return {"E_meV_atom": m["energy_per_atom_meV"]["mae"], "F_meV_A": m["forces_meV_per_A"]["mae"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="benchmarks/out/fine_tune")
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget of each run (max_time)")
    ap.add_argument("--only", nargs="*", default=None, help="run only the models whose name contains one of these "
                    "(the data and, for fine-tuning, the base run must be in --work already)")
    args = ap.parse_args()
    from nnpes.training import train

    work = Path(args.work)
    if not args.only:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    sets = {"old_train": old_frames(60, 0), "old_test": old_frames(40, 1),
            "new_train": new_frames(40, 2), "new_test": new_frames(40, 3)}
    for name, frames in sets.items():
        write(work / f"{name}.extxyz", frames)
    runs = {
        "base (old data)": config(work / "old_train.extxyz", work / "old_test.extxyz", work / "base", args.minutes, 5e-3),
        "fine-tuned (new data, lr/10)": config(work / "new_train.extxyz", work / "new_test.extxyz", work / "ft",
                                               args.minutes, 5e-4),
        "fine-tuned, frozen embedding + layer_0": config(work / "new_train.extxyz", work / "new_test.extxyz",
                                                         work / "ft_frozen", args.minutes, 5e-4,
                                                         freeze=["embedding", "layer_0"]),
        "from scratch (new data)": config(work / "new_train.extxyz", work / "new_test.extxyz", work / "scratch",
                                          args.minutes, 5e-3),
    }
    runs["fine-tuned, frozen e0/offset/scale"] = config(work / "new_train.extxyz", work / "new_test.extxyz",
                                                       work / "ft_frozen_energy", args.minutes, 5e-4,
                                                       freeze=["e0", "offset", "scale"])
    replay = config(work / "new_train.extxyz", work / "new_test.extxyz", work / "ft_replay", args.minutes, 5e-4)
    replay["data"]["train"] = [str(work / "new_train.extxyz"), str(work / "old_train.extxyz")]
    runs["fine-tuned on new + old data (replay)"] = replay
    for name in [n for n in runs if n.startswith("fine-tuned")]:
        runs[name]["model"] = {**MODEL, "init_from": str(work / "base")}
    if args.only:
        runs = {k: v for k, v in runs.items() if any(o in k for o in args.only)}
    table = {}
    for name, cfg in runs.items():
        shutil.rmtree(cfg["output"]["run_dir"], ignore_errors=True)  # --only: a run of an earlier call
        result = train(cfg, quiet=True)
        table[name] = {"epochs": result.epochs,
                       "old": errors(result.model, sets["old_test"]), "new": errors(result.model, sets["new_test"])}
        print(name, json.dumps(table[name]), flush=True)
    old = json.loads((work / "results.json").read_text()) if args.only and (work / "results.json").exists() else {}
    table = {**old, **table}
    (work / "results.json").write_text(json.dumps(table, indent=1))
    print("\n| model | epochs | old test E (meV/atom) | old test F (meV/Å) | new test E (meV/atom) | new test F (meV/Å) |")
    print("|---|---|---|---|---|---|")
    for name, r in table.items():
        print(f"| {name} | {r['epochs']} | {r['old']['E_meV_atom']:.2f} | {r['old']['F_meV_A']:.1f} | "
              f"{r['new']['E_meV_atom']:.2f} | {r['new']['F_meV_A']:.1f} |")


if __name__ == "__main__":
    main()
