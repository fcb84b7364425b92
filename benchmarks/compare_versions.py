"""Speed of two checkouts of nnpes side by side, interleaved, on the same machine and load.

    git worktree add /tmp/before <rev>
    python benchmarks/compare_versions.py /tmp/before . --rounds 2

Each round runs every benchmark once per checkout (order alternating between rounds), each in a
fresh process with that checkout's ``src`` on PYTHONPATH and its own benchmark scripts:
``inference.py`` (aspirin E+F, 540-atom water E+F, training step on 8 aspirins; standard NequIP,
float32), ``md.py`` (velocity Verlet under lax.scan, fcc Cu 108 and 1008 atoms) and the committee
speed of ``active_learning.py speed`` (K = 4, one vmapped call, aspirin). Prints medians over
rounds and after/before ratios as a markdown table.
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


def _run(root: Path, args: list[str]) -> str:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{root}: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def inference(root: Path, name: str) -> float:
    out = _run(root, ["benchmarks/inference.py", "--one", name, "--repeats", "7"])
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


def one_round(root: Path) -> dict[str, float]:
    res = {"aspirin E+F (ms)": inference(root, "aspirin"), "water 540 E+F (ms)": inference(root, "water540"),
           "training step, 8 aspirins (ms)": inference(root, "train")}
    res.update(md(root))
    res.update(committee(root))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    roots = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs = {"before": [], "after": []}
    for r in range(args.rounds):
        for label in (("before", "after") if r % 2 == 0 else ("after", "before")):
            runs[label].append(one_round(roots[label]))
            print(f"round {r} {label}: {json.dumps(runs[label][-1])}", file=sys.stderr, flush=True)
    print(f"| benchmark | before (median of {args.rounds}) | after | after / before |")
    print("|---|---:|---:|---:|")
    for key in runs["before"][0]:
        b = statistics.median(x[key] for x in runs["before"])
        a = statistics.median(x[key] for x in runs["after"] if key in x)
        print(f"| {key} | {b:.1f} | {a:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
