"""Data-parallel training throughput vs number of devices (forced CPU devices here).

    python benchmarks/scaling.py --devices 1 2 4 --batch-size 32 --molecule aspirin --repeats 20 --rounds 3

Each device count runs in its own process with XLA_FLAGS=--xla_force_host_platform_device_count=D
(the flag must be set before JAX starts). One training step = energy + forces + loss + gradient +
Adam update of a small NequIP on a global batch of rMD17 structures, split into D equal-shape
sub-batches (``nnpes.training.parallel``). Timing: median of ``--repeats`` steps after warm-up,
``block_until_ready``, variants interleaved; wall and CPU time (all threads) since the machine is
shared. Also times the plain (non-mesh) step and, for D = 1, the step under
``jax.default_matmul_precision("highest")`` (on CPU float32 matmuls are already full precision, so
this measures only the cost of asking).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from timing import alternated  # this directory is on sys.path

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17"
MODEL = {"name": "nequip", "elements": ["H", "C", "O"], "cutoff": 4.0, "num_layers": 2, "features": 16,
         "radial_mlp_width": 32}


def _structures(n: int, molecule_name: str):
    import numpy as np

    path = DATA_DIR / f"rmd17_{molecule_name}_train_01.npz"
    if path.exists():
        from nnpes.data import read_structures

        return read_structures(str(path), index=f":{n}", energy_unit="kcal/mol")
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng, out = np.random.default_rng(0), []
    for _ in range(n):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


def child(n_devices: int, batch_size: int, repeats: int, molecule_name: str) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from nnpes.graph import atoms_to_graph, batch, pad_graph, to_device
    from nnpes.potential import build_potential
    from nnpes.training import TrainState, compile_steps, make_train_step
    from nnpes.training.parallel import make_mesh, replicate, shard_batch, sub_batch_shape

    assert jax.device_count() >= n_devices, jax.devices()
    structures = _structures(batch_size, molecule_name)
    pot = build_potential(MODEL, seed=0, dataset=structures)
    graphs = [atoms_to_graph(a, pot.cutoff) for a in structures]
    tx = optax.adam(1e-3)
    w = {"energy": jnp.float32(1.0), "forces": jnp.float32(100.0), "stress": jnp.float32(0.0)}
    one = jnp.float32(1.0)
    efs = lambda v, g: pot.energy_forces_stress(v, g, False)  # noqa: E731
    state = TrainState.create(pot.params, tx, ema=False)
    mesh = make_mesh(n_devices)

    def mesh_step(precision=None):  # the trainer's data-parallel step (nnpes.training.step)
        return compile_steps(*make_train_step(efs, tx, ema_decay=None, mesh=mesh), mesh=mesh, precision=precision)[0]

    out = {"devices": n_devices, "batch_size": batch_size, "platform": jax.devices()[0].platform}
    step = mesh_step()
    stacked = shard_batch(graphs, mesh, jnp.float32, shape=sub_batch_shape(graphs, batch_size, n_devices))
    s_r = replicate(state, mesh)
    fns = {"mesh_step": lambda: step(s_r, stacked, w, one)}
    if n_devices == 1:
        plain_step = compile_steps(*make_train_step(efs, tx, ema_decay=None))[0]
        g = to_device(pad_graph(batch(graphs), *sub_batch_shape(graphs, batch_size, 1)), jnp.float32)
        step_hi = mesh_step("highest")  # traced (and cached) under default_matmul_precision("highest")
        fns["plain_step"] = lambda: plain_step(state, g, w, one)
        fns["mesh_step_highest"] = lambda: step_hi(s_r, stacked, w, one)
    for k, t in alternated(fns, repeats, warmup=3).items():
        out[f"{k}_s"], out[f"{k}_cpu_s"] = t.median, t.cpu_median
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--molecule", default="ethanol", help="rMD17 molecule (EMT-labelled ethanol if the data is absent)")
    ap.add_argument("--rounds", type=int, default=1, help="sweep the device counts this many times; medians over rounds")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.batch_size, args.repeats, args.molecule)))
        return
    runs = {d: [] for d in args.devices}
    for _ in range(args.rounds):
        for d in args.devices:
            env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={d}")
            proc = subprocess.run([sys.executable, __file__, "--child", str(d), "--batch-size", str(args.batch_size),
                                   "--repeats", str(args.repeats), "--molecule", args.molecule],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(proc.stderr[-3000:])
            runs[d].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for d in args.devices:
        row = dict(runs[d][0])
        for k in row:
            if k.endswith("_s"):
                row[k] = statistics.median(r[k] for r in runs[d])
        rows.append(row)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, load average "
          f"{os.getloadavg()[0]:.1f}; batch {args.batch_size} rMD17 {args.molecule}; NequIP 2 layers x 16 "
          f"features, float32; {args.rounds} round(s) x {args.repeats} steps")
    print("| devices | step wall (ms) | step CPU (ms) | structures/s | speed-up | efficiency |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = rows[0]["mesh_step_s"] / r["mesh_step_s"]
        r["structures_per_s"] = args.batch_size / r["mesh_step_s"]
        r["efficiency"] = speedup * rows[0]["devices"] / r["devices"]
        print(f"| {r['devices']} | {1000 * r['mesh_step_s']:.1f} | {1000 * r['mesh_step_cpu_s']:.1f} | "
              f"{r['structures_per_s']:.0f} | {speedup:.2f} | {r['efficiency']:.2f} |")
    one = next((r for r in rows if r["devices"] == 1), None)
    if one:
        print(f"\nD = 1, wall (CPU) ms: plain jit step {1000 * one['plain_step_s']:.1f} ({1000 * one['plain_step_cpu_s']:.1f}), "
              f"mesh step {1000 * one['mesh_step_s']:.1f} ({1000 * one['mesh_step_cpu_s']:.1f}), mesh step under "
              f"default_matmul_precision('highest') {1000 * one['mesh_step_highest_s']:.1f} ({1000 * one['mesh_step_highest_cpu_s']:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
