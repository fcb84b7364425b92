"""MD speed: ms/step, atom-steps/s and ns/day for fcc Cu boxes with the standard NequIP model
(4 layers, 32 features, l_max 1, cutoff 5 Å, float32; ``--model mace``: MACE's standard 2 layers,
128x0e+128x1o, max_ell 3, correlation 3), velocity Verlet with nnpes' on-device
neighbour list under lax.scan, and the same model through ase's VelocityVerlet + our calculator.

    python benchmarks/md.py --sizes 100 1000 10000 --ase-sizes 100 1000
    python benchmarks/md.py --model mace --sizes 100 1000 --ase-sizes 100 1000

The peers' MD at the same sizes: ``peer_mace_torch.py --md-sizes`` (ase + mace-torch's calculator).

Medians over repeated blocks after a warm-up block (which includes compilation); every timing
ends in block_until_ready. At ``--ase-sizes`` the two loops run alternately, block by block (the
same number of steps each), and the ratio is taken per pair: on a shared machine the load changes
between one run and the next, not within a pair. Random (untrained) weights: speed does not depend on them.
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
from timing import alternated, repeat

STANDARD = {"nequip": {"name": "nequip", "elements": ["Cu"], "cutoff": 5.0, "dtype": "float32", "num_layers": 4,
                       "features": 32, "l_max": 1},
            # MACE's defaults are its standard size (2 layers, 128x0e+128x1o, max_ell 3, correlation 3)
            "mace": {"name": "mace", "elements": ["Cu"], "cutoff": 5.0, "dtype": "float32"}}
DT = 1.0  # fs


def nnpes_loop(pot, atoms, block: int):
    """(run_block, carry): ``run_block()`` runs ``block`` steps of the lax.scan loop (the first call
    compiles); carry = [state, nbrs]. Raises if the neighbour list ever overflowed."""
    neighbor_fn, energy_fn = md_functions(pot, atoms)
    integ = velocity_verlet(energy_fn.energy_and_forces, DT)
    R = jnp.asarray(atoms.positions, jnp.float32)
    v = jnp.asarray(maxwell_boltzmann(atoms.get_masses(), 300.0, seed=0), jnp.float32)
    nbrs = neighbor_fn.allocate(R)
    carry = [jax.jit(integ.init_fn)(R, v, jnp.asarray(atoms.get_masses(), jnp.float32), nbrs), nbrs]
    block_fn = jax.jit(lambda s, nb: run_steps(integ.step_fn, s, nb, block))

    def run_block():
        carry[:] = jax.block_until_ready(block_fn(*carry))
        if bool(carry[1].did_buffer_overflow):
            raise RuntimeError("neighbour list overflowed during the benchmark")

    return run_block, carry


def ase_loop(pot, atoms, block: int):
    """``run_block()``: ``block`` steps of ase's VelocityVerlet with ``pot.calculator()`` (the
    first call compiles)."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = pot.calculator()
    atoms.set_velocities(maxwell_boltzmann(atoms.get_masses(), 300.0, seed=0) / units.fs)
    dyn = VelocityVerlet(atoms, timestep=DT * units.fs)
    return lambda: dyn.run(block)


def bare_calls(pot, atoms) -> dict:
    """The force calls of one step alone: on the MD loop's padded graph (the issue's yardstick)
    and on predict's host-built graph (what ase + the calculator pays per step, less the host
    work); the list's per-step update without a rebuild."""
    neighbor_fn, energy_fn = md_functions(pot, atoms)
    R = jnp.asarray(atoms.positions, jnp.float32)
    nbrs = neighbor_fn.allocate(R)
    (_, padded), = padded_batches([atoms_to_graph(atoms, pot.cutoff)], MAX_EDGES_PER_CALL)
    graph = to_device(padded, pot.dtype)
    # each is compiled once by nnpes itself (EnergyFn's methods, the list's update, predict's model)
    return {"force call, MD graph": lambda: energy_fn.energy_and_forces(R, neighbor=nbrs),
            "force call, predict graph": lambda: pot._compiled(pot.params, graph, False),
            "list update, no rebuild": lambda: neighbor_fn.update(R + 0.01, nbrs)}


def bench_rebuild(pot, atoms, repeats: int):
    """Median seconds of one on-device neighbour-list rebuild (update after every atom moved)."""
    neighbor_fn, _ = md_functions(pot, atoms)
    R = jnp.asarray(atoms.positions, jnp.float32)
    t0 = time.perf_counter()
    nbrs = jax.block_until_ready(neighbor_fn.allocate(R))
    alloc = time.perf_counter() - t0
    moved = R + 0.3  # beyond skin/2: forces the rebuild
    return repeat(lambda: neighbor_fn.update(moved, nbrs), repeats).median, alloc, int(nbrs.n_pairs)


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
    ap.add_argument("--parts", action="store_true", help="also time the step's force calls and list update alone, alternated with the loop (bare_calls)")
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
        loop, carry = nnpes_loop(pot, atoms, block)
        fns = {"loop": loop}
        if n in args.ase_sizes:  # alternated block by block, so both see the same load
            fns["ase"] = ase_loop(pot, atoms, block)
        if args.parts:
            fns.update(bare_calls(pot, atoms))
        times = alternated(fns, repeats)
        per_step = {name: statistics.median(times[name].wall) / (block if name in ("loop", "ase") else 1)
                    for name in times}
        print(row(f"nnpes VV, lax.scan blocks of {block}", len(atoms), per_step["loop"])
              + f"  <!-- {int(carry[1].n_pairs)} pairs in list, model slots {carry[1].layout.model_capacity} -->",
              flush=True)
        if "ase" in times:
            ratios = [a / b for a, b in zip(times["loop"].wall, times["ase"].wall)]
            print(row(f"ase VelocityVerlet + pot.calculator(), runs of {block}", len(atoms), per_step["ase"])
                  + f"  <!-- loop / ase: median {statistics.median(ratios):.3f} of {repeats} pairs, "
                  f"min {min(ratios):.3f}, max {max(ratios):.3f} -->", flush=True)
        if args.parts:
            print("  <!-- " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in per_step.items() if k not in ("loop", "ase"))
                  + " (medians, alternated with the loop) -->", flush=True)
    for n in args.rebuild_sizes:
        atoms = cu_box(n)
        sec, alloc, pairs = bench_rebuild(pot, atoms, args.repeats)
        print(f"| neighbour-list rebuild on device (cutoff+skin 5.5 Å, {pairs} pairs; allocate {alloc:.1f} s) "
              f"| {len(atoms)} | {sec * 1e3:.1f} | | |", flush=True)


if __name__ == "__main__":
    main()
