"""Behler–Parrinello speed: per-element MLP strategies, and energy+forces of the whole model.

    python benchmarks/behler_parrinello.py [--repeats 30]

float32, CPU, median (and minimum) of repeated jitted calls after warm-up (``block_until_ready``).
Structures: rMD17 aspirin (21 atoms) alone and 32 frames per call; mlearn Si training cells.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from nnpes import keys
from nnpes.graph import batch, pad_graph
from nnpes.data import read_structures
from nnpes.graph import atoms_to_graph, edge_vectors
from nnpes.config.model import parse_model_config
from nnpes.models.symmetry_functions import acsf
from nnpes.potential import Potential, init_params, make_module

from timing import repeat  # this directory is on sys.path

DATA = "/work/shared/data"


class Timing(float):
    """Median in ms (the figure we quote); ``str`` also shows the minimum, since the shared
    machine's load makes the spread large."""

    def __new__(cls, times):
        obj = super().__new__(cls, 1e3 * float(np.median(times)))
        obj.min = 1e3 * float(np.min(times))
        return obj

    def __format__(self, spec):
        return f"{float(self):{spec}} (min {self.min:{spec}})"


def median_ms(fn, *args, repeats: int) -> Timing:
    return Timing(repeat(lambda: fn(*args), repeats, warmup=2).wall)


# ---- per-element MLP: all elements for every atom vs per-atom gathered weights ----------------


def mlp_all_elements(ws, bs, x, species):
    h = x
    for k, (w, b) in enumerate(zip(ws, bs)):
        h = jnp.einsum("nd,edh->neh" if k == 0 else "ned,edh->neh", h, w) + b
        if k < len(ws) - 1:
            h = jnp.tanh(h)
    return jnp.take_along_axis(h[..., 0], species[:, None], axis=1)[:, 0]


def mlp_gathered(ws, bs, x, species):
    h = x
    for k, (w, b) in enumerate(zip(ws, bs)):
        h = jnp.einsum("nd,ndh->nh", h, w[species]) + b[species]
        if k < len(ws) - 1:
            h = jnp.tanh(h)
    return h[:, 0]


def bench_mlp(repeats: int):
    print("\n## per-element MLP, energy + d/dx (N atoms, D descriptors, hidden 32-32, float32)")
    print("| N | elements | D | all elements (ms) | gathered weights (ms) |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for n_atoms, n_el, d in [(21, 3, 96), (672, 3, 96), (864, 4, 144), (4096, 4, 144)]:
        sizes = [d, 32, 32, 1]
        ws = [jnp.asarray(rng.normal(size=(n_el, a, b)) / np.sqrt(a), jnp.float32) for a, b in zip(sizes, sizes[1:])]
        bs = [jnp.zeros((n_el, b), jnp.float32) for b in sizes[1:]]
        x = jnp.asarray(rng.normal(size=(n_atoms, d)), jnp.float32)
        species = jnp.asarray(rng.integers(0, n_el, n_atoms), jnp.int32)
        row = []
        for mlp in (mlp_all_elements, mlp_gathered):
            f = jax.jit(jax.value_and_grad(lambda x, ws, bs, species, mlp=mlp: jnp.sum(mlp(ws, bs, x, species))))
            row.append(median_ms(f, x, ws, bs, species, repeats=repeats))
        print(f"| {n_atoms} | {n_el} | {d} | {row[0]:.3f} | {row[1]:.3f} |")


# ---- whole model -------------------------------------------------------------------------------


def padded(atoms_list, cutoff):
    g = batch([atoms_to_graph(a, cutoff) for a in atoms_list])
    n_node, n_edge, n_graph = int(g.n_node.sum()) + 1, int(g.n_edge.sum()), len(g.n_node) + 1
    return pad_graph(g, n_node, n_edge, n_graph)


def to_device(g):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float32) if np.issubdtype(np.asarray(x).dtype, np.floating) else jnp.asarray(x), g
    )


def bench_model(repeats: int):
    print("\n## whole model, energy + forces (+ stress for Si), default hyperparameters, float32")
    print("| structures | atoms | edges | descriptors per atom | descriptors fwd+bwd (ms) | energy+forces (ms) | µs/atom |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    aspirin = read_structures(f"{DATA}/rmd17/rmd17_aspirin_train_01.npz", index=":32", energy_unit="kcal/mol")
    si = read_structures(f"{DATA}/mlearn_si/training.json", index=":")
    si = [a for a in si if len(a) == 64][:8]
    cases = [
        ("aspirin ×1, r_c 5 Å", aspirin[:1], ["H", "C", "O"], 5.0, False),
        ("aspirin ×32, r_c 5 Å", aspirin, ["H", "C", "O"], 5.0, False),
        (f"Si 64-atom cells ×{len(si)}, r_c 5 Å", si, ["Si"], 5.0, True),
    ]
    for name, structures, elements, cutoff, stress in cases:
        cfg = parse_model_config({"name": "behler_parrinello", "elements": elements, "cutoff": cutoff})
        module = make_module(cfg)
        pot = Potential(cfg, init_params(cfg, module), module)
        g = to_device(padded(structures, cutoff))
        efs = jax.jit(lambda v, g: pot.energy_forces_stress(v, g, compute_stress=stress))
        t_model = median_ms(efs, pot.params, g, repeats=repeats)

        inner = module.inner
        table = jnp.asarray(pot.table)

        def desc_sum(pos, g):
            em = jraph.get_edge_padding_mask(g)
            species = jnp.maximum(table[g.nodes[keys.NUMBERS]], 0)
            v = jnp.where(em[:, None], edge_vectors(pos, g.globals[keys.CELL], g), 0.0)
            return jnp.sum(acsf(inner.spec, v, species, g.senders, g.receivers, em))

        t_desc = median_ms(jax.jit(jax.grad(desc_sum)), g.nodes[keys.POSITIONS], g, repeats=repeats)
        n_atoms = sum(len(a) for a in structures)
        print(
            f"| {name} | {n_atoms} | {int(g.n_edge[:-1].sum())} | {inner.spec.size} | {t_desc:.2f} | "
            f"{t_model:.2f} | {1e3 * float(t_model) / n_atoms:.1f} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}, load average {os.getloadavg()[0]:.1f}")
    bench_mlp(args.repeats)
    bench_model(args.repeats)


if __name__ == "__main__":
    main()
