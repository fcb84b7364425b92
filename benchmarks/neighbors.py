"""Neighbour lists, graph building and the training loader: how fast, and how many padded shapes.

    python benchmarks/neighbors.py                 # 10^3 .. 10^6 atoms (10^6 timed once)
    python benchmarks/neighbors.py --max-atoms 1e5 # skip the 10^6-atom systems

Prints a Markdown table. Times are medians over repeats after one warm-up call.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from ase import Atoms
from ase.build import bulk

from nnpes.graph import GraphLoader
from nnpes.graph import atoms_to_graph
from nnpes.graph.neighbors import neighbor_list

from timing import repeat  # this directory is on sys.path

CUTOFF = 5.0  # Å
ASPIRIN = "/work/shared/data/rmd17/rmd17_aspirin_train_01.npz"
BPA = "/work/shared/data/3bpa/train_300K.xyz"


def fcc_cu(n_atoms: int) -> Atoms:
    m = max(1, round((n_atoms / 4) ** (1 / 3)))
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((m, m, m))


def water(n_atoms: int, seed: int = 0) -> Atoms:
    """Liquid-density water (1 g/cm³, 0.1 atoms/Å³): randomly oriented molecules on a jittered grid."""
    m = max(1, round((n_atoms / 3) ** (1 / 3)))
    spacing = (18.015 / 0.6022 / 1.0) ** (1 / 3)  # Å per molecule at 1 g/cm³ (3.10 Å)
    rng = np.random.default_rng(seed)
    centres = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    centres = centres + rng.normal(scale=0.2, size=centres.shape)
    local = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])
    q = rng.normal(size=(len(centres), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    rot = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)
    positions = (centres[:, None, :] + np.einsum("mij,aj->mai", rot, local)).reshape(-1, 3)
    return Atoms(("OH2") * len(centres), positions=positions, cell=np.eye(3) * m * spacing, pbc=True)


def neighbor_rows(max_atoms: float):
    rows = []
    for target in (1_000, 10_000, 100_000, 1_000_000):
        if target > max_atoms:
            continue
        repeats = 5 if target <= 10_000 else (3 if target <= 100_000 else 1)
        for name, build in (("fcc Cu", fcc_cu), ("water", water)):
            atoms = build(target)
            n = len(atoms)
            n_edges = len(neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF).senders)
            t_nl = repeat(lambda: neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF), repeats).medians
            t_graph = repeat(lambda: atoms_to_graph(atoms, CUTOFF), repeats).medians
            rows.append((name, n, n_edges, t_nl, t_graph, repeats))
            print(f"| {name} | {n:,} | {n_edges:,} | {t_nl[0] * 1e3:,.0f} | {t_nl[1] * 1e3:,.0f} "
                  f"| {t_nl[1] / n * 1e6:.1f} | {t_graph[0] * 1e3:,.0f} | {t_graph[1] * 1e3:,.0f} "
                  f"| {t_graph[1] / n * 1e6:.1f} | {repeats} |", flush=True)
    return rows


def loader_rows(batch_size: int, epochs: int):
    from nnpes.data import read_structures

    for label, path, kwargs in (("rMD17 aspirin (1000)", ASPIRIN, {"energy_unit": "kcal/mol"}), ("3BPA train_300K (500)", BPA, {})):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms_list = read_structures(path, **kwargs)
        for a in atoms_list:
            a.pbc = False  # 3BPA's Lattice is a dummy box
        t0 = time.perf_counter()
        graphs = [atoms_to_graph(a, CUTOFF) for a in atoms_list]
        t_graphs = time.perf_counter() - t0
        for prefetch in (0, 2):
            loader = GraphLoader(graphs, batch_size=batch_size, seed=0, prefetch=prefetch)
            per_epoch = []
            for epoch in range(epochs + 1):  # epoch 0 is the warm-up
                loader.set_epoch(epoch)
                t0 = time.perf_counter()
                n = sum(1 for _ in loader)
                per_epoch.append(time.perf_counter() - t0)
            t = statistics.median(per_epoch[1:])
            plan = loader.plan(0)
            exact = {(int(loader.n_node[b].sum()), int(loader.n_edge[b].sum()), len(b)) for b in plan}
            used = loader.epoch_shapes(0)
            real_edges = sum(int(loader.n_edge[b].sum()) for b in plan)
            padded_edges = sum(s[1] for s in used)
            print(f"| {label} | {batch_size} | {prefetch} | {n / t:,.0f} | {len(set(used))} | {len(loader.shapes)} "
                  f"| {len(exact)} | {100 * (1 - real_edges / padded_edges):.1f} % | {t_graphs:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-atoms", type=float, default=1e6, help="largest system to time")
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="timed loader epochs (after one warm-up)")
    parser.add_argument("--skip-loader", action="store_true")
    args = parser.parse_args()
    print(f"Neighbour list (vesin, full, receiver-sorted) and atoms_to_graph, cutoff {CUTOFF} Å\n")
    print("| system | atoms | edges | neighbor_list wall ms | CPU ms | CPU µs/atom "
          "| atoms_to_graph wall ms | CPU ms | CPU µs/atom | repeats |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    neighbor_rows(args.max_atoms)
    if not args.skip_loader:
        print(f"\nGraphLoader over one epoch (median of {args.epochs}), cutoff {CUTOFF} Å\n")
        print("| dataset | batch | prefetch | batches/s | shapes in epoch 0 | buckets | shapes unpadded "
              "| padding edges | graph build s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        loader_rows(args.batch_size, args.epochs)


if __name__ == "__main__":
    main()
