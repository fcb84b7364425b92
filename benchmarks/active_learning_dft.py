"""DFT-level active learning (issue 6): PySCF PBE/def2-SVP oracle on ethanol, scored on rMD17.

rMD17 ethanol is labelled at PBE/def2-SVP (ORCA); PySCF RKS PBE/def2-SVP with density fitting
(``nnpes.oracle.PySCFOracle``) reproduces its forces to ~0.3 meV/Å (``verify``), so an AL
committee trained only on PySCF labels can be scored on the rMD17 test frames (forces).

Two arms, same committee (K members, same NequIP size, same fit settings except epochs):

  reference: trained on 950 rMD17 ethanol train frames (ORCA labels);
  active:    the AL loop (``nnpes.active.loop``) from a handful of rMD17 geometries relabelled by
             PySCF, exploring with committee Langevin MD at 500 K, ≤ ``--per-iter`` labels per
             iteration, serial PySCF calls.

Both are scored as committee-mean force MAE on the same fixed subset of rMD17 test frames.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/active_learning_dft.py verify
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/active_learning_dft.py reference --workdir runs/al_dft
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/active_learning_dft.py active --workdir runs/al_dft
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/active_learning_dft.py compare --workdir runs/al_dft
    python benchmarks/active_learning_dft.py figure --workdir runs/al_dft

``figure`` writes benchmarks/figures/al_dft_ethanol_pyscf.png and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core for PySCF and XLA (shared machine)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/rmd17")
TRAIN = DATA / "rmd17_ethanol_train_01.npz"
TEST = DATA / "rmd17_ethanol_test_01.npz"
FIGURE = ROOT / "benchmarks/figures/al_dft_ethanol_pyscf.png"
MODEL = {"name": "nequip", "elements": ["H", "C", "O"], "cutoff": 5.0, "num_layers": 2, "features": 16,
         "radial_mlp_width": 32}


def read(path, index=":"):
    from nnpes.data import read_structures

    return read_structures(str(path), index=index, energy_unit="kcal/mol")


def test_subset(n: int, seed: int = 0):
    """A fixed random subset of n of the 1000 rMD17 test frames (the frames are a time series)."""
    frames = read(TEST)
    pick = np.sort(np.random.default_rng(seed).choice(len(frames), size=n, replace=False))
    return [frames[i] for i in pick]


def fit_config(epochs: int, seed: int = 0, batch_size: int = 4):
    from nnpes.active.ensemble import FitConfig

    return FitConfig(max_epochs=epochs, batch_size=batch_size, lr=5e-3, min_lr_ratio=0.05,
                     energy_weight=1.0, forces_weight=100.0, bootstrap=True, seed=seed)


def verify(n: int) -> dict:
    """PySCF forces against the rMD17 labels on n test frames (meV/Å) and seconds per call."""
    from nnpes.oracle import PySCFOracle

    oracle, rows = PySCFOracle(), []
    for a in read(TEST, f":{n}"):
        t = time.perf_counter()
        r = oracle(a)
        dt = time.perf_counter() - t
        d = r["forces"] - a.get_forces()
        rows.append({"seconds": dt, "force_mae_meV_A": 1e3 * float(np.abs(d).mean()),
                     "force_max_meV_A": 1e3 * float(np.abs(d).max()),
                     "energy_diff_meV": 1e3 * (r["energy"] - a.get_potential_energy())})
        print(json.dumps(rows[-1]), flush=True)
    return {"frames": rows}


def reference(workdir: Path, k: int, epochs: int, n_test: int, batch_size: int) -> dict:
    from nnpes.active.ensemble import Ensemble

    train = read(TRAIN, ":950")
    test = test_subset(n_test)
    ens = Ensemble.build(MODEL, k, seed=0, dataset=train)
    t0 = time.perf_counter()
    ens = ens.fit(train, fit_config(epochs, batch_size=batch_size))
    seconds = time.perf_counter() - t0
    err = ens.errors(test)
    out = {"n_train": len(train), "K": k, "epochs": epochs, "batch_size": batch_size, "train_seconds": seconds,
           "test_forces_mae": err["forces_meV_per_A"]["mae"] / 1e3, "test_forces_rmse": err["forces_meV_per_A"]["rmse"] / 1e3, "n_test": len(test)}
    ens.save(workdir / "reference_ensemble")
    (workdir / "reference.json").write_text(json.dumps(out, indent=1))
    return out


def active(workdir: Path, k: int, n_initial: int, per_iter: int, iterations: int, epochs: int, warm_epochs: int,
           n_test: int, steps: int) -> dict:
    import ase.io
    from ase import Atoms

    from nnpes.active.ensemble import load_ensemble
    from nnpes.active.loop import run as run_loop
    from nnpes.oracle import LabelStore

    workdir.mkdir(parents=True, exist_ok=True)
    # Starting geometries: n_initial rMD17 train frames spread over the series, positions only (their
    # labels come from the PySCF oracle like every other label, so all training labels are PySCF).
    train = read(TRAIN)
    idx = np.linspace(0, len(train) - 1, n_initial).round().astype(int)
    ase.io.write(workdir / "starts.extxyz", [Atoms(train[i].numbers, positions=train[i].positions) for i in idx])
    test = test_subset(n_test)
    ase.io.write(workdir / "test.extxyz", test)  # rMD17 forces (energies carry ORCA's, compare forces)
    cfg = {
        "model": MODEL,
        "data": {"starts": str(workdir / "starts.extxyz"), "max_starts": n_initial, "initial_per_start": 1,
                 "initial_rattle": 0.0, "valid_fraction": 0.0, "test": str(workdir / "test.extxyz")},
        "committee": {"size": k, "max_epochs": epochs, "warm_max_epochs": warm_epochs, "batch_size": 4,
                      "lr": 5e-3, "min_lr_ratio": 0.05, "bootstrap": True, "warm_start": True},
        "explore": {"temperatures": [500.0], "steps": steps, "timestep": 0.5, "friction": 0.02, "stride": 10,
                    "chunk": 100},
        "select": {"lo": 0.02, "hi": 2.0, "max_per_iteration": per_iter, "method": "fps"},
        "oracle": {"type": "pyscf", "xc": "PBE", "basis": "def2-SVP", "density_fit": True},
        "executor": {"kind": "serial"},
        "stop": {"max_iterations": iterations, "accurate_fraction": 0.99},
    }
    run_dir = workdir / "al_run"
    t0 = time.perf_counter()
    state = run_loop(cfg, run_dir, resume=(run_dir / "state.json").exists())
    loop_seconds = time.perf_counter() - t0
    # Each iteration's committee was trained on the labels of the iterations before it; the last
    # iteration's labels are used by one more warm-start fit here (same settings) for the last point.
    hist = state["history"]
    calls_before = [n_initial] + [h["oracle_calls"] for h in hist[:-1]]
    curve = [{"iteration": h["iteration"], "oracle_calls": c, "n_train": json.loads(
        (run_dir / f"iter_{h['iteration']:03d}/train.json").read_text())["n_train"],
        "test_forces_mae": h["test"]["forces_meV_per_A"]["mae"] / 1e3, "test_forces_rmse": h["test"]["forces_meV_per_A"]["rmse"] / 1e3,
        "selected": h["selected"], "fractions": h["fractions"]} for h, c in zip(hist, calls_before)]
    store = LabelStore(run_dir / "labels.jsonl")
    labels = store.atoms("ok")
    last = load_ensemble(run_dir / f"iter_{hist[-1]['iteration']:03d}/ensemble")
    t1 = time.perf_counter()
    last = last.fit(labels, fit_config(warm_epochs, seed=1000 * (len(hist) + 1)))
    err = last.errors(test)
    curve.append({"iteration": len(hist), "oracle_calls": len(store), "n_train": len(labels),
                  "test_forces_mae": err["forces_meV_per_A"]["mae"] / 1e3, "test_forces_rmse": err["forces_meV_per_A"]["rmse"] / 1e3, "selected": 0})
    out = {"K": k, "n_initial": n_initial, "per_iter": per_iter, "loop_seconds": loop_seconds,
           "final_fit_seconds": time.perf_counter() - t1, "stop_reason": state.get("stop_reason"),
           "oracle_failures": sum(r["status"] == "failed" for r in store.records), "curve": curve}
    (workdir / "active.json").write_text(json.dumps(out, indent=1))
    return out


def compare(workdir: Path, k: int, epochs: int, n_test: int, batch_size: int, sizes: list[int]) -> dict:
    """Separate label choice from training budget: cold-train the committee with the reference's fit
    settings on (a) the first n AL labels (PySCF) and (b) n random rMD17 train frames (ORCA)."""
    from nnpes.active.ensemble import Ensemble
    from nnpes.oracle import LabelStore

    al_labels = LabelStore(workdir / "al_run/labels.jsonl").atoms("ok")
    pool = read(TRAIN, ":950")
    test = test_subset(n_test)
    out_path = workdir / "compare.json"
    rows = json.loads(out_path.read_text()) if out_path.exists() else []  # earlier sizes are kept
    for n in sizes:
        for name, frames in (("active_learning_labels", al_labels[:n]),
                             ("random_rmd17_frames", [pool[i] for i in np.random.default_rng(n).choice(950, n, replace=False)])):
            ens = Ensemble.build(MODEL, k, seed=0, dataset=frames)
            t0 = time.perf_counter()
            ens = ens.fit(frames, fit_config(epochs, batch_size=batch_size))
            err = ens.errors(test)
            rows = [r for r in rows if (r["labels"], r["n"]) != (name, len(frames))]
            rows.append({"labels": name, "n": len(frames), "epochs": epochs, "train_seconds": time.perf_counter() - t0,
                         "test_forces_mae": err["forces_meV_per_A"]["mae"] / 1e3, "test_forces_rmse": err["forces_meV_per_A"]["rmse"] / 1e3})
            print(json.dumps(rows[-1]), flush=True)
            out_path.write_text(json.dumps(sorted(rows, key=lambda r: (r["labels"], r["n"])), indent=1))
    return {"rows": rows}


def figure(workdir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = json.loads((workdir / "reference.json").read_text())
    al = json.loads((workdir / "active.json").read_text())
    calls = [p["oracle_calls"] for p in al["curve"]]
    mae = [1e3 * p["test_forces_mae"] for p in al["curve"]]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(calls, mae, "o-", label=f"active learning, PySCF oracle (K={al['K']})")
    ax.axhline(1e3 * ref["test_forces_mae"], color="k", ls="--",
               label=f"same committee, {ref['n_train']} rMD17 frames")
    cmp_path = workdir / "compare.json"
    cmp_rows = json.loads(cmp_path.read_text()) if cmp_path.exists() else []
    for name, marker, lab in (("active_learning_labels", "s", "AL labels, retrained like the reference"),
                              ("random_rmd17_frames", "^", "random rMD17 frames, trained like the reference")):
        pts = [(r["n"], 1e3 * r["test_forces_mae"]) for r in cmp_rows if r["labels"] == name]
        if pts:
            ax.plot(*zip(*pts), marker, ls="none", label=lab)
    ax.set_xlabel("PySCF PBE/def2-SVP oracle calls")
    ax.set_ylabel("force MAE on rMD17 test (meV/Å)")
    ax.set_yscale("log")
    ax.set_title("ethanol, NequIP 2×16, committee mean")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=120)
    lines = ["| oracle calls | training labels | force MAE (meV/Å) | force RMSE (meV/Å) |", "|---|---|---|---|"]
    for p in al["curve"]:
        lines.append(f"| {p['oracle_calls']} | {p['n_train']} | {1e3 * p['test_forces_mae']:.0f} | "
                     f"{1e3 * p['test_forces_rmse']:.0f} |")
    lines.append(f"| reference: {ref['n_train']} rMD17 frames | {ref['n_train']} | {1e3 * ref['test_forces_mae']:.0f} | "
                 f"{1e3 * ref['test_forces_rmse']:.0f} |")
    if cmp_rows:
        lines += ["", "| labels | n | epochs (as reference) | force MAE (meV/Å) | force RMSE (meV/Å) |", "|---|---|---|---|---|"]
        for r in cmp_rows:
            lines.append(f"| {r['labels']} | {r['n']} | {r['epochs']} | {1e3 * r['test_forces_mae']:.0f} | "
                         f"{1e3 * r['test_forces_rmse']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="PySCF forces vs the rMD17 labels")
    v.add_argument("--n", type=int, default=3)
    for name in ("reference", "active", "compare", "figure"):
        s = sub.add_parser(name)
        s.add_argument("--workdir", default="runs/al_dft")
        s.add_argument("--k", type=int, default=3)
        s.add_argument("--n-test", type=int, default=200)
    r = sub.choices["reference"]
    r.add_argument("--epochs", type=int, default=60)
    r.add_argument("--batch-size", type=int, default=8)
    c = sub.choices["compare"]
    c.add_argument("--epochs", type=int, default=300)
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--sizes", type=int, nargs="+", default=[45, 95])
    a = sub.choices["active"]
    a.add_argument("--n-initial", type=int, default=5)
    a.add_argument("--per-iter", type=int, default=10)
    a.add_argument("--iterations", type=int, default=4)
    a.add_argument("--epochs", type=int, default=150)
    a.add_argument("--warm-epochs", type=int, default=80)
    a.add_argument("--steps", type=int, default=400, help="MD steps per exploration trajectory (0.5 fs)")
    args = p.parse_args(argv)
    if args.cmd == "verify":
        print(json.dumps(verify(args.n), indent=1))
        return 0
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.cmd == "reference":
        print(json.dumps(reference(workdir, args.k, args.epochs, args.n_test, args.batch_size), indent=1))
    elif args.cmd == "active":
        print(json.dumps(active(workdir, args.k, args.n_initial, args.per_iter, args.iterations, args.epochs,
                                args.warm_epochs, args.n_test, args.steps), indent=1))
    elif args.cmd == "compare":
        compare(workdir, args.k, args.epochs, args.n_test, args.batch_size, args.sizes)
    else:
        print(figure(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
