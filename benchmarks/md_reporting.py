"""Issue 13 §0–§1 measurements: eager ``neighbor_fn.update`` (compiles and memory maps per call),
the default list capacity under real 300 K copper motion, and ``run_md``'s ns/day against the
block length (``--thermo-every``).

    python benchmarks/md_reporting.py [--steps 400]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from nnpes.compile_cache import CompileCounter
from nnpes.md import neighbor_list_fn, run_md
from nnpes.potential import build_potential

jax.config.update("jax_enable_x64", True)  # the capacity check replays float64 frames


def n_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def eager_update(calls: int = 200):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)  # 108 atoms
    fn = neighbor_list_fn(atoms.cell.array, True, 5.0, dtype=jnp.float32)
    nbrs = fn.allocate(atoms.positions)
    rng = np.random.default_rng(0)
    moves = [jnp.asarray(atoms.positions + rng.normal(0, 0.3, atoms.positions.shape), jnp.float32),
             jnp.asarray(atoms.positions, jnp.float32)]
    nbrs = fn.update(moves[0], nbrs)
    with CompileCounter() as c:
        maps, t0 = n_maps(), time.perf_counter()
        for k in range(calls):
            nbrs = fn.update(moves[k % 2], nbrs)  # alternately rebuilt and kept
        jax.block_until_ready(nbrs)
        dt = (time.perf_counter() - t0) / calls
    print(f"| eager `update`, 108 Cu atoms, {calls} calls | {c.n / calls:.2f} compiles/call | "
          f"{(n_maps() - maps) / calls:.2f} memory maps/call | {1e3 * dt:.2f} ms/call |")


def capacity():
    data = np.load(Path(__file__).parents[1] / "tests" / "fixtures" / "cu256_emt_300K.npz")
    fn = neighbor_list_fn(data["cell"], True, 5.0, dtype=jnp.float64)
    nbrs = fn.allocate(data["lattice"])
    for r in data["positions"]:
        nbrs = fn.update(r.astype(np.float64), nbrs)
    lay = nbrs.layout
    print(f"| Cu 256 atoms, EMT 300 K, 40 frames: needed / capacity | list {int(nbrs.max_pairs)} / {lay.capacity} | "
          f"bin {int(nbrs.max_bin_count)} / {lay.bin_capacity} | model {int(nbrs.max_model_pairs)} / {lay.model_capacity} |")


def ns_per_day(steps: int):
    pot = build_potential({"name": "nequip", "elements": ["Cu"], "cutoff": 5.0, "dtype": "float32",
                           "num_layers": 2, "features": 8}, seed=0)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=0)
    for every in (5, 50, steps // 2):
        # Untrained weights have no repulsive core: atoms may come close (min_distance off).
        res = run_md(pot, atoms, steps=steps, timestep=0.5, ensemble="nvt", temperature=300.0,
                     thermo_every=every, traj_every=every * (steps // every), seed=0, min_distance=0.0)
        t = res.timing
        print(f"| NequIP 2x8, 108 Cu, {steps} steps, thermo_every {every} | {res.ns_per_day:.2f} ns/day "
              f"({1e3 * t.step_s / t.steps_timed:.2f} ms/step over {t.steps_timed} steps) | wall {res.wall_s:.1f} s | "
              f"{t.summary()} |")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=400)
    args = p.parse_args()
    eager_update()
    capacity()
    ns_per_day(args.steps)
