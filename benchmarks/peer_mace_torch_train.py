"""Accuracy per CPU-hour against mace-torch (issue 11 §3): the same rMD17 split, the same model size,
one core each.

Three steps, each its own command:

    # 1. nnpes's venv: write the split of an nnpes config as extxyz (eV, eV/Å), the 50 validation
    #    frames exactly the ones nnpes validates on, and print the mace-torch command
    python benchmarks/peer_mace_torch_train.py export configs/rmd17_ethanol_mace_170.yaml --out benchmarks/out/peer_ethanol

    # 2. mace-torch's venv (see peer_mace_torch.py), pinned to a core nnpes is not using, for the
    #    same wall time as the nnpes run it is compared with:
    taskset -c 0 timeout 7200 peers/mace/bin/mace_run_train ...      # the command step 1 printed

    # 3. either venv with matplotlib: validation force MAE against training time, both runs
    python benchmarks/peer_mace_torch_train.py curve --nnpes "nnpes MACE=runs/rmd17_ethanol_mace_170/metrics.csv" \
        --mace-torch "mace-torch MACE=benchmarks/out/peer_ethanol/logs" \
        --out benchmarks/figures/rmd17_ethanol_mace_vs_mace_torch.png

The nequip package is the peer of nnpes's NequIP: its config is
benchmarks/peer_configs/nequip_rmd17_ethanol.yaml (run it as its header says; ``--nequip
"nequip=benchmarks/out/peer_ethanol/nequip_run/wallclock.csv"`` draws it).

mace-torch's settings are its rMD17 recipe at nnpes's standard MACE size: 128x0e+128x1o, max_ell 3,
correlation 3, r_max 5 Å, 8 Bessel, radial MLP [64, 64, 64], batch 5, AMSGrad, lr 0.01, EMA 0.99,
w_E 1, w_F 1000, float32, validation every epoch. The curve's x axis is each run's own wall clock of
training (nnpes: metrics.csv ``time_s``; mace-torch: its log's timestamps from the first epoch line).
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path


def export(config: str, out: Path) -> None:
    from ase.io import write

    from nnpes.config.training import load_config
    from nnpes.training.data import load_splits

    cfg = load_config(config)
    splits = load_splits(cfg.data, cfg.model.elements)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid", "test"):
        frames = []
        for atoms in getattr(splits, name):
            a = atoms.copy()
            a.info = {"REF_energy": atoms.get_potential_energy()}
            a.arrays["REF_forces"] = atoms.get_forces()
            a.calc = None
            frames.append(a)
        write(out / f"{name}.xyz", frames, format="extxyz")
        print(f"{name}: {len(frames)} frames -> {out / f'{name}.xyz'}")
    m = cfg.model.hparams
    print("\nmace-torch command (OMP_NUM_THREADS=1; pin it with taskset):")
    print(" ".join([
        "OMP_NUM_THREADS=1 mace_run_train", "--name=mace_peer", f"--train_file={out / 'train.xyz'}",
        f"--valid_file={out / 'valid.xyz'}", f"--test_file={out / 'test.xyz'}",
        "--energy_key=REF_energy", "--forces_key=REF_forces", "--E0s=average", "--model=MACE",
        f"--num_interactions={m.num_interactions}", f"--num_channels={m.num_channels}", f"--max_L={m.max_L}",
        f"--max_ell={m.max_ell}", f"--correlation={m.correlation}", f"--r_max={cfg.model.cutoff}",
        f"--num_radial_basis={m.num_bessel}", f"--num_cutoff_basis={m.num_polynomial_cutoff}",
        f"--radial_MLP=[{','.join(map(str, m.radial_mlp))}]", f"--batch_size={cfg.training.batch_size}", "--valid_batch_size=10",
        f"--max_num_epochs={cfg.training.max_epochs}", "--amsgrad", f"--lr={cfg.training.lr}", "--ema",
        f"--ema_decay={cfg.training.ema_decay}", f"--energy_weight={cfg.training.energy_weight}",
        f"--forces_weight={cfg.training.forces_weight}", "--eval_interval=1", "--error_table=PerAtomMAE",
        "--default_dtype=float32", "--device=cpu", "--seed=0", f"--log_dir={out / 'logs'}",
        f"--model_dir={out}", f"--checkpoints_dir={out / 'checkpoints'}", f"--results_dir={out / 'results'}",
    ]))


# mace-torch's log lines: "2026-12-06 04:40:01.123 INFO: Epoch 3: ... MAE_F=  25.1 meV / A ..."
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) INFO: (?:Epoch (\d+)|Initial)")
_MAE_F = re.compile(r"MAE_F=\s*([\d.]+) meV ?/ ?A")


def mace_torch_curve(log_dir: Path) -> tuple[list[float], list[float]]:
    """(hours since the first evaluation, validation force MAE meV/Å) from mace-torch's log."""
    (log,) = [p for p in sorted(Path(log_dir).glob("*.log")) if not p.name.endswith("_debug.log")][-1:]
    t0, hours, mae = None, [], []
    for line in log.read_text().splitlines():
        stamp, f = _STAMP.match(line), _MAE_F.search(line)
        if not (stamp and f):
            continue
        t = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S.%f")
        t0 = t0 or t
        hours.append((t - t0).total_seconds() / 3600)
        mae.append(float(f.group(1)))
    return hours, mae


def nnpes_curve(metrics_csv: Path) -> tuple[list[float], list[float]]:
    import csv

    rows = list(csv.DictReader(open(metrics_csv)))
    return [float(r["time_s"]) / 3600 for r in rows], [float(r["valid_f_mae_meV_A"]) for r in rows]


def nequip_curve(clock_csv: Path) -> tuple[list[float], list[float]]:
    """The nequip peer run's (hours, validation force MAE meV/Å), from ``peer_nequip_clock.WallClock``."""
    import csv

    rows = list(csv.DictReader(open(clock_csv)))
    return [float(r["time_s"]) / 3600 for r in rows], [1e3 * float(r["val0_epoch/forces_mae"]) for r in rows]


READERS = {"nnpes": nnpes_curve, "mace_torch": mace_torch_curve, "nequip": nequip_curve}


def curve(series: list[tuple[str, str, Path]], out: Path) -> None:
    """One figure: validation force MAE against each run's training wall clock; ``series`` holds
    (kind in READERS, label, path) per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, label, path in series:
        h, mae = READERS[kind](path)
        ax.plot(h, mae, label=label)
        print(f"{label}: {len(h)} evaluations, {h[-1]:.2f} h, best validation F MAE {min(mae):.2f} meV/Å")
    ax.set(xlabel="training time on one core (h)", ylabel="validation force MAE (meV/Å)", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"figure -> {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    e = sub.add_parser("export")
    e.add_argument("config")
    e.add_argument("--out", type=Path, default=Path("benchmarks/out/peer_ethanol"))
    c = sub.add_parser("curve")
    for kind, what in (("nnpes", "an nnpes run's metrics.csv"), ("mace-torch", "mace-torch's log directory"),
                       ("nequip", "the nequip run's wallclock.csv")):
        c.add_argument(f"--{kind}", action="append", default=[], metavar="LABEL=PATH", help=what)
    c.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.step == "export":
        export(args.config, args.out)
    else:
        series = [(kind, *spec.split("=", 1)) for kind in READERS for spec in getattr(args, kind)]
        curve([(kind, label, Path(path)) for kind, label, path in series], args.out)


if __name__ == "__main__":
    main()
