"""Speed of two checkouts of nnpes side by side, interleaved, on the same machine and load.

    git worktree add /tmp/before <rev>
    python benchmarks/compare_versions.py /tmp/before . --rounds 2

Each benchmark runs back to back for the two checkouts, ``--rounds`` times with the order
alternating, so both see the same load; each run is a fresh process with that checkout's ``src`` on
PYTHONPATH and its own benchmark scripts:
``inference.py`` (aspirin E+F, 540-atom water E+F, training step on 8 aspirins; standard NequIP,
float32), ``md.py`` (velocity Verlet under lax.scan, fcc Cu 108 and 1008 atoms) and the committee
speed of ``active_learning.py speed`` (K = 4, one vmapped call, aspirin), and ``build``: one
``build_potential`` in a fresh process, compilation cache off. Prints medians over
rounds and after/before ratios as a markdown table. ``--model mace --only "inference aspirin"
"inference water540" "inference train"`` compares MACE at its standard size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path


def _run(root: Path, args: list[str], **env_vars: str) -> str:
    env = {**os.environ, **env_vars, "PYTHONPATH": str(root / "src")}
    proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{root}: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


MODEL = "nequip"  # --model


def inference(root: Path, name: str) -> float:
    out = _run(root, ["benchmarks/inference.py", "--one", name, "--repeats", "7", "--model", MODEL])
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    return 1e3 * json.loads(line[7:])["seconds"]


def md(root: Path) -> dict[str, float]:
    out = _run(root, ["benchmarks/md.py", "--sizes", "100", "1000", "--ase-sizes", "--rebuild-sizes",
                      "--repeats", "3"])
    rows = re.findall(r"^\| nnpes VV[^|]*\| (\d+) \| ([\d.]+) \|", out, re.M)
    return {f"MD velocity Verlet, Cu {n} atoms (ms/step)": float(ms) for n, ms in rows}


def committee(root: Path) -> dict[str, float]:
    out = json.loads(_run(root, ["benchmarks/active_learning.py", "speed"]))
    return {f"committee K=4, {k} (ms)": v["vmapped_ms"] for k, v in out.items() if isinstance(v, dict)}


# Seconds of build_potential (fresh parameters, the model's registered defaults: its standard size)
# in a fresh process, the persistent cache off: the start of every `nnpes train`, mostly compiling.
BUILD = """
import json, time
import nnpes
t = time.perf_counter()
nnpes.build_potential({model}, seed=0)
print(json.dumps(time.perf_counter() - t))
"""


def build(root: Path) -> dict[str, float]:
    model = {"name": MODEL, "elements": ["H", "C", "O"], "cutoff": 5.0}
    out = _run(root, ["-c", BUILD.format(model=model)], NNPES_COMPILE_CACHE="off")
    seconds = json.loads(out.splitlines()[-1])
    return {f"build_potential, fresh process ({MODEL}, s)": seconds}


BENCHMARKS = {
    "inference aspirin": lambda root: {"aspirin E+F (ms)": inference(root, "aspirin")},
    "inference water540": lambda root: {"water 540 E+F (ms)": inference(root, "water540")},
    "inference train": lambda root: {"training step, 8 aspirins (ms)": inference(root, "train")},
    "inference train-water540": lambda root: {"training step, water 540 (ms)": inference(root, "train-water540")},
    "md": md,
    "committee": committee,
    "build": build,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="nequip", help="model of the inference benchmarks (standard size)")
    ap.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="a subset of the benchmarks")
    args = ap.parse_args()
    global MODEL
    MODEL = args.model
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs = {"before": {}, "after": {}}
    for name, bench in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        for r in range(args.rounds):
            for label in (("before", "after") if r % 2 == 0 else ("after", "before")):
                for key, value in bench(roots[label]).items():
                    runs[label].setdefault(key, []).append(value)
            print(f"{name} round {r}: " + json.dumps({k: (runs["before"][k][-1], runs["after"][k][-1])
                                                      for k in runs["after"]}), file=sys.stderr, flush=True)
    print(f"| benchmark | before (median of {args.rounds}) | after | after / before, median of pairs (range) |")
    print("|---|---:|---:|---:|")
    for key, before in runs["before"].items():
        b, a = statistics.median(before), statistics.median(runs["after"][key])
        ratios = [y / x for x, y in zip(before, runs["after"][key])]
        print(f"| {key} | {b:.1f} | {a:.1f} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
