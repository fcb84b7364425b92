"""Cold and warm start of the CLI with JAX's persistent compilation cache (issue 12).

Each case runs as its own process twice on one new cache directory: first cold (empty cache),
then warm (what the first one compiled is on disk), repeated and interleaved; medians reported.
Cases: ``nnpes evaluate`` (100 rMD17 ethanol test frames), ``nnpes md`` (ethanol, 200 NVT steps),
``nnpes train`` to its first epoch line (50 ethanol frames, batch 5). Model: NequIP at the standard
size (4 layers, 32 channels, l_max 1, r_c 5 Å), float32, untrained (timing only).

    python benchmarks/cold_start.py --data ../shared/data/rmd17 --repeats 3 --cpu 0
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

MODEL = {"name": "nequip", "elements": ["H", "C", "O"], "cutoff": 5.0, "num_layers": 4, "features": 32, "l_max": 1}


def prepare(work: Path, data: Path) -> dict[str, list[str]]:
    """The saved model, a start structure and a train config; returns the command of each case."""
    from ase.io import write

    import nnpes
    from nnpes.data import read_structures

    test = data / "rmd17_ethanol_test_01.npz"
    frames = read_structures(str(test), index=":100", energy_unit="kcal/mol")
    nnpes.build_potential(MODEL, dataset=frames).save(work / "model")
    write(work / "start.xyz", frames[0])
    cfg = {"data": {"train": str(data / "rmd17_ethanol_train_01.npz"), "energy_unit": "kcal/mol",
                    "n_train": 50, "n_valid": 10, "index": ":60"},
           "model": MODEL, "training": {"max_epochs": 1, "batch_size": 5, "progress": False},
           "output": {"plots": False}}
    (work / "train.yaml").write_text(yaml.safe_dump(cfg))
    return {
        "evaluate": ["evaluate", str(work / "model"), str(test), "--energy-unit", "kcal/mol", "--index", ":100"],
        "md": ["md", str(work / "model"), str(work / "start.xyz"), "--ensemble", "nvt", "--steps", "200",
               "--no-progress", "--out", str(work / "md")],
        "train": ["train", str(work / "train.yaml"), "--run-dir", str(work / "run")],
    }


def run_once(cmd: list[str], cache: Path, cpu: int | None, work: Path) -> float:
    """Wall seconds of one process (for train: until its first epoch line)."""
    shutil.rmtree(work / "run", ignore_errors=True)
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    env = dict(os.environ, NNPES_COMPILE_CACHE=str(cache))
    t0 = time.perf_counter()
    proc = subprocess.Popen(pin + [sys.executable, "-m", "nnpes.cli.main", *cmd, "--compile-cache", str(cache)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_epoch = None
    for line in proc.stderr:
        if cmd[0] == "train" and line.startswith("epoch") and line.split()[1] == "0":
            first_epoch = time.perf_counter() - t0
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd[0]} failed")
    return first_epoch if first_epoch is not None else time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/rmd17")
    ap.add_argument("--work", default="benchmarks/out/cold_start")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=None, help="pin every process to this core")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cases = prepare(work, Path(args.data).resolve())
    times = {(c, k): [] for c in cases for k in ("cold", "warm")}
    for r in range(args.repeats):
        for name, cmd in cases.items():
            cache = work / f"cache_{name}_{r}"
            for kind in ("cold", "warm"):
                times[(name, kind)].append(run_once(cmd, cache, args.cpu, work))
                print(f"repeat {r} {name} {kind}: {times[(name, kind)][-1]:.1f} s", flush=True)
    print("\n| command | cold (s) | warm (s) | cold / warm |\n|---|---|---|---|")
    for name in cases:
        cold, warm = statistics.median(times[(name, "cold")]), statistics.median(times[(name, "warm")])
        what = "to first epoch line" if name == "train" else "whole process"
        print(f"| nnpes {name} ({what}) | {cold:.1f} | {warm:.1f} | {cold / warm:.2f} |")


if __name__ == "__main__":
    main()
