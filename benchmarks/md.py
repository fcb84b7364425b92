"""MD speed: ms/step, atom-steps/s and ns/day for fcc Cu boxes with the standard NequIP model
(4 layers, 32 features, l_max 1, cutoff 5 Å, float32; ``--model mace``: MACE's standard 2 layers,
128x0e+128x1o, max_ell 3, correlation 3), velocity Verlet with nnpes' on-device
neighbour list under lax.scan, and the same model through ase's VelocityVerlet + our calculator.

    python benchmarks/md.py --sizes 100 1000 10000 --ase-sizes 100 1000
    python benchmarks/md.py --model mace --sizes 100 1000 --ase-sizes 100 1000

The peers' MD at the same sizes: ``peer_mace_torch.py --md-sizes`` (ase + mace-torch's calculator).

Medians over repeated blocks after a warm-up block (which includes compilation); every timing
ends in block_until_ready. Random (untrained) weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from nnpes.graph import atoms_to_graph, to_device
from nnpes.md import maxwell_boltzmann, md_functions, run_steps, velocity_verlet
from nnpes.potential import build_potential
from nnpes.potential.predict import MAX_EDGES_PER_CALL, padded_batches

from inference import cu_box  # the benchmarks' structures (this directory is on sys.path)

STANDARD = {"nequip": {"name": "nequip", "elements": ["Cu"], "cutoff": 5.0, "dtype": "float32", "num_layers": 4,
                       "features": 32, "l_max": 1},
            # MACE's defaults are its standard size (2 layers, 128x0e+128x1o, max_ell 3, correlation 3)
            "mace": {"name": "mace", "elements": ["Cu"], "cutoff": 5.0, "dtype": "float32"}}
DT = 1.0  # fs


def bench_nnpes(pot, atoms, block: int, repeats: int):
    neighbor_fn, energy_fn = md_functions(pot, atoms)
    integ = velocity_verlet(energy_fn.energy_and_forces, DT)
    R = jnp.asarray(atoms.positions, jnp.float32)
    nbrs = neighbor_fn.allocate(R)
    v = jnp.asarray(maxwell_boltzmann(atoms.get_masses(), 300.0, seed=0), jnp.float32)
    state = jax.jit(integ.init_fn)(R, v, jnp.asarray(atoms.get_masses(), jnp.float32), nbrs)
    block_fn = jax.jit(lambda s, nb: run_steps(integ.step_fn, s, nb, block))
    t0 = time.perf_counter()
    state, nbrs = jax.block_until_ready(block_fn(state, nbrs))  # compile + warm-up
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, nbrs = jax.block_until_ready(block_fn(state, nbrs))
        times.append((time.perf_counter() - t0) / block)
    if bool(nbrs.did_buffer_overflow):
        raise RuntimeError("neighbour list overflowed during the benchmark")
    return statistics.median(times), warm, int(nbrs.n_pairs)


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_parts(pot, atoms, repeats: int) -> dict[str, float]:
    """Seconds of the pieces of one MD step, each jitted on its own: the force call on the MD
    loop's padded graph (the issue's yardstick), the list's per-step update without a rebuild, and
    predict's force call on its host-built graph (what ase + the calculator pays per step, less
    the host work)."""
    neighbor_fn, energy_fn = md_functions(pot, atoms)
    R = jnp.asarray(atoms.positions, jnp.float32)
    nbrs = neighbor_fn.allocate(R)
    # both are compiled once by nnpes itself (EnergyFn's methods, the list's update)
    out = {"force call, MD graph": _median_time(lambda: energy_fn.energy_and_forces(R, neighbor=nbrs), repeats),
           "list update, no rebuild": _median_time(lambda: neighbor_fn.update(R + 0.01, nbrs), repeats),
           "model slots": nbrs.layout.model_capacity}
    (_, padded), = padded_batches([atoms_to_graph(atoms, pot.cutoff)], MAX_EDGES_PER_CALL)
    graph = to_device(padded, pot.dtype)
    out["force call, predict graph"] = _median_time(lambda: pot._compiled(pot.params, graph, False), repeats)
    out["predict graph edges"] = int(padded.senders.shape[0])
    return out


def bench_ase(pot, atoms, steps: int):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = pot.calculator()
    atoms.set_velocities(maxwell_boltzmann(atoms.get_masses(), 300.0, seed=0) / units.fs)
    dyn = VelocityVerlet(atoms, timestep=DT * units.fs)
    dyn.run(2)  # compile + warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        dyn.run(1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_rebuild(pot, atoms, repeats: int):
    """Median seconds of one on-device neighbour-list rebuild (update after every atom moved)."""
    neighbor_fn, _ = md_functions(pot, atoms)
    R = jnp.asarray(atoms.positions, jnp.float32)
    t0 = time.perf_counter()
    nbrs = jax.block_until_ready(neighbor_fn.allocate(R))
    alloc = time.perf_counter() - t0
    update = jax.jit(neighbor_fn.update)
    moved = R + 0.3  # beyond skin/2: forces the rebuild
    jax.block_until_ready(update(moved, nbrs))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(update(moved, nbrs))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), alloc, int(nbrs.n_pairs)


def row(label, n, sec_per_step):
    ns_day = DT * 1e-6 / sec_per_step * 86400
    return f"| {label} | {n} | {sec_per_step * 1e3:.2f} | {n / sec_per_step:.3g} | {ns_day:.3g} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--ase-sizes", type=int, nargs="*", default=[100, 1000], help="a subset of --sizes")
    ap.add_argument("--rebuild-sizes", type=int, nargs="*", default=[1000, 10000, 100000],
                    help="time the on-device neighbour-list rebuild alone")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", choices=sorted(STANDARD), default="nequip", help="at its standard size")
    ap.add_argument("--parts", action="store_true", help="also time the step's pieces on their own (bench_parts)")
    args = ap.parse_args()
    pot = build_potential(STANDARD[args.model], seed=0)
    print(f"# {platform.processor() or platform.machine()}, jax {jax.__version__}, {jax.devices()[0].platform}, "
          f"{args.model} standard size ({pot.n_parameters} parameters)")
    print("| run | atoms | ms/step | atom-steps/s | ns/day (1 fs) |")
    print("|---|---:|---:|---:|---:|")
    for n in args.sizes:
        atoms = cu_box(n)
        block = max(1, min(20, 20000 // len(atoms)))
        repeats = args.repeats if len(atoms) <= 20000 else 1
        sec, warm, pairs = bench_nnpes(pot, atoms, block, repeats)
        print(row(f"nnpes VV, lax.scan blocks of {block}", len(atoms), sec)
              + f"  <!-- {pairs} pairs in list, warm-up {warm:.1f} s -->", flush=True)
        if args.parts:
            parts = bench_parts(pot, atoms, args.repeats)
            print("  <!-- " + ", ".join(f"{k} {v * 1e3:.1f} ms" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in parts.items()) + " -->", flush=True)
        if n in args.ase_sizes:  # right after, so both see the same load on a shared machine
            print(row("ase VelocityVerlet + pot.calculator()", len(atoms), bench_ase(pot, atoms, args.repeats * 4)),
                  flush=True)
    for n in args.rebuild_sizes:
        atoms = cu_box(n)
        sec, alloc, pairs = bench_rebuild(pot, atoms, args.repeats)
        print(f"| neighbour-list rebuild on device (cutoff+skin 5.5 Å, {pairs} pairs; allocate {alloc:.1f} s) "
              f"| {len(atoms)} | {sec * 1e3:.1f} | | |", flush=True)


if __name__ == "__main__":
    main()
