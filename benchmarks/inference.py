"""Inference (energy + forces) and training-step speed of a model at its standard size (NequIP by
default; ``--model mace``: MACE's standard 2 layers, 128x0e+128x1o, max_ell 3, correlation 3).

    python benchmarks/inference.py                       # molecules, water 540/~4000, training step
    python benchmarks/inference.py --model mace --only aspirin water540 train
    python benchmarks/inference.py --ladder 12288 108000 # add larger water boxes (atoms, approx.)
    python benchmarks/inference.py --only train-water540 # training step on one periodic 540-atom box

Each system runs in a fresh subprocess, so peak memory (ru_maxrss) is that system's alone.
Timing: float32, jitted ``energy_forces_stress`` (no stress), neighbour list and padding built
outside the timed region, median of --repeats calls after one warm-up, ``block_until_ready``.
"CPU ms" is the median process CPU time per call (all threads): on a shared, overloaded machine
it is the better guide to what an idle machine would give (wall ≈ CPU / threads used).
FLOPs are XLA's cost analysis of the compiled call; "of peak" divides the achieved FLOP rate by
the machine's measured float32 GEMM rate (--peak-gflops, 300 on the 2-core dev machine).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

from timing import repeat  # this directory is on sys.path; pure Python (the peers' venvs import this file)

DATA = "/work/shared/data"
ELEMENTS = ["H", "C", "N", "O"]
WATER_SPACING = 3.104  # Å: one H2O per 29.9 Å^3 = 1.00 g/cm^3


def water_box(n_side: tuple[int, int, int], seed: int = 0):
    """Periodic liquid-density water: randomly oriented, rattled H2O on a grid (3·Πn_side atoms)."""
    from ase import Atoms
    from ase.build import molecule
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    h2o = molecule("H2O").positions
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in n_side], indexing="ij"), -1).reshape(-1, 3) * WATER_SPACING
    rots = Rotation.random(len(grid), random_state=seed).as_matrix()
    pos = (np.einsum("mij,aj->mai", rots, h2o) + grid[:, None, :]).reshape(-1, 3)
    pos += rng.normal(0.0, 0.05, pos.shape)
    return Atoms("OHH" * len(grid), positions=pos, cell=np.diag(np.array(n_side) * WATER_SPACING), pbc=True)


def water_for(n_atoms: int):
    k = max(2, round((n_atoms / 3) ** (1 / 3)))
    return water_box((k, k, k))


def cu_box(n_atoms: int):
    """Cubic-ish fcc Cu supercell with about n_atoms atoms (4 per cubic cell), 300 K rattle
    (``benchmarks/md.py`` and its peers)."""
    from ase.build import bulk

    cells = max(1, round((n_atoms / 4) ** (1 / 3)))
    reps = [cells] * 3
    while 4 * np.prod(reps) < 0.9 * n_atoms:  # sizes between cubes
        reps[int(np.argmin(reps))] += 1
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(reps)
    atoms.rattle(0.05, seed=0)
    return atoms


def system(name: str):
    import ase.io
    from ase import Atoms

    if name == "aspirin":
        d = np.load(f"{DATA}/rmd17/rmd17_aspirin_train_01.npz")
        return Atoms(numbers=d["nuclear_charges"], positions=d["coords"][0])
    if name == "3bpa":
        a = ase.io.read(f"{DATA}/3bpa/train_300K.xyz", index=0)
        a.pbc = False
        a.cell = None
        return a
    if name == "water540":
        return water_box((6, 6, 5))
    if name.startswith("water"):
        return water_for(int(name[5:]))
    raise KeyError(name)


def displaced_aspirins(n: int = 8):
    """The training-step batch: n copies of aspirin, positions displaced by 0.05 Å (seed 0)."""
    base = system("aspirin")
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        frames.append(a)
    return frames


def build_model(cutoff: float, model: str = "nequip", **hparams):
    """The model at its standard size (the registered defaults, or ``hparams`` changed), float32."""
    import jax

    from nnpes.config.model import parse_model_config
    from nnpes.potential import init_params, make_module, species_table

    cfg = parse_model_config({"name": model, "elements": ELEMENTS, "cutoff": cutoff, **hparams})
    module = make_module(cfg)
    params = jax.jit(lambda: init_params(cfg, module, seed=0))()
    return cfg, module, params, species_table(cfg)


def to_device(graph):
    import jax
    import jax.numpy as jnp

    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float32) if np.asarray(x).dtype == np.float64 else jnp.asarray(x), graph
    )


def timed(fn, args, repeats: int):
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    t = repeat(lambda: compiled(*args), repeats)
    return t.median, t.cpu_median, compile_s, flops


def inference_workload(name: str, cutoff: float, model: str = "nequip", **hparams):
    """(fn, args, atoms, edges): the model's energy + forces call on system ``name``, float32."""
    from nnpes.graph import pad_graph
    from nnpes.graph import atoms_to_graph
    from nnpes.potential import energy_forces_stress

    atoms = system(name)
    cfg, module, params, table = build_model(cutoff, model, **hparams)
    g = atoms_to_graph(atoms, cutoff)
    n, e = len(atoms), int(g.n_edge[0])
    graph = to_device(pad_graph(g, n + 1, e, 2))
    fn = lambda p, gr: energy_forces_stress(module, table, p, gr, False)  # noqa: E731
    return fn, (params, graph), n, e


def workload(name: str, cutoff: float, model: str = "nequip", **hparams):
    """``train_workload`` for ``train``/``train-<system>``, else ``inference_workload``."""
    if name.startswith("train"):
        return train_workload(cutoff, model, name, **hparams)
    return inference_workload(name, cutoff, model, **hparams)


def add_hparam_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--hparam", nargs="*", default=[], metavar="KEY=VALUE",
                    help="model hyperparameters changed from the standard size, e.g. l_max=2 (YAML values)")


def hparams_of(args) -> dict:
    """``--hparam`` values as a dict (YAML-parsed values)."""
    import yaml  # not at the top: the peers' venvs import this file

    return {k: yaml.safe_load(v) for k, v in (h.split("=", 1) for h in args.hparam)}


def run_inference(name: str, cutoff: float, repeats: int, model: str = "nequip") -> dict:
    fn, args, n, e = inference_workload(name, cutoff, model)
    sec, cpu_s, compile_s, flops = timed(fn, args, repeats)
    return dict(kind="E+F", system=name, atoms=n, edges=e, seconds=sec, cpu_s=cpu_s, compile_s=compile_s, flops=flops)


def trained_system(name: str) -> str | None:
    """The periodic system a ``train-<system>`` workload trains on; None for ``train`` (8 aspirins)."""
    return None if name == "train" else name.removeprefix("train-")


def train_workload(cutoff: float, model: str = "nequip", name: str = "train", **hparams):
    """(fn, args, atoms, edges): one Adam step on an energy + forces loss over one padded batch:
    8 displaced aspirins (``train``), or one periodic system (``train-water540``: above the models'
    edge-block threshold, so the blocked path of ``aggregation.sum_messages``)."""
    import jax
    import jax.numpy as jnp
    import optax

    from nnpes import keys
    from nnpes.graph import batch, pad_graph
    from nnpes.graph import atoms_to_graph
    from nnpes.potential import energy_forces_stress

    rng = np.random.default_rng(1)
    graphs = []
    periodic = trained_system(name)
    frames = displaced_aspirins() if periodic is None else [system(periodic)]
    for a in frames:
        a.arrays[keys.FORCES] = rng.normal(0.0, 1.0, a.positions.shape)  # labels: values do not affect speed
        a.info[keys.ENERGY] = float(rng.normal())
        graphs.append(atoms_to_graph(a, cutoff))
    b = batch(graphs)
    n, e = int(b.n_node.sum()), int(b.n_edge.sum())
    graph = to_device(pad_graph(b, n + 1, e, len(frames) + 1))
    cfg, module, variables, table = build_model(cutoff, model, **hparams)
    opt = optax.adam(1e-3)

    def loss_fn(p, gr):
        out = energy_forces_stress(module, table, {**variables, "params": p}, gr, False)
        node_w = jnp.repeat(gr.globals[keys.WEIGHT], gr.n_node, total_repeat_length=gr.nodes[keys.POSITIONS].shape[0])
        le = jnp.sum(gr.globals[keys.WEIGHT] * (out["energy"] - gr.globals[keys.ENERGY]) ** 2) / len(frames)
        lf = jnp.sum(node_w[:, None] * (out["forces"] - gr.nodes[keys.FORCES]) ** 2) / (3 * n)
        return le + 10.0 * lf

    def step(p, s, gr):
        loss, grads = jax.value_and_grad(loss_fn)(p, gr)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    p = variables["params"]
    return step, (p, opt.init(p), graph), n, e


def run_train_step(cutoff: float, repeats: int, model: str = "nequip", name: str = "train") -> dict:
    fn, args, n, e = train_workload(cutoff, model, name)
    sec, cpu_s, compile_s, flops = timed(fn, args, repeats)
    what = trained_system(name) or "8 x aspirin"
    return dict(kind="train step", system=what, atoms=n, edges=e, seconds=sec, cpu_s=cpu_s, compile_s=compile_s, flops=flops)


def child(args):
    import jax

    jax.config.update("jax_enable_x64", False)
    if args.one.startswith("train"):
        r = run_train_step(args.cutoff, args.repeats, args.model, args.one)
    else:
        r = run_inference(args.one, args.cutoff, args.repeats, args.model)
    r["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="nequip", help="registered model at its default (standard) size")
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--big-repeats", type=int, default=2, help="repeats for ladder boxes above 20000 atoms")
    ap.add_argument("--ladder", type=int, nargs="*", default=[], help="extra water boxes, ~atoms each")
    ap.add_argument("--peak-gflops", type=float, default=300.0)
    ap.add_argument("--only", nargs="*", help="subset of: aspirin 3bpa water540 water4000 train train-water540 waterN")
    args = ap.parse_args()
    if args.one:
        return child(args)
    names = args.only or ["aspirin", "3bpa", "water540", "water4000", "train"] + [f"water{n}" for n in args.ladder]
    print(f"{'what':<11} {'system':<12} {'atoms':>7} {'edges':>9} {'ms/call':>9} {'atoms/s':>10} "
          f"{'CPU ms':>9} {'µs/atom':>8} {'compile s':>9} {'GFLOP':>8} {'of peak':>7} {'peak MB':>8}", flush=True)
    for name in names:
        big = name.startswith("water") and name[5:].isdigit() and int(name[5:]) > 20000
        repeats = args.big_repeats if big else args.repeats
        cmd = [sys.executable, __file__, "--one", name, "--model", args.model, "--cutoff", str(args.cutoff),
               "--repeats", str(repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{name}: failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}", flush=True)
            continue
        r = json.loads(lines[-1][7:])
        s = r["seconds"]
        print(f"{r['kind']:<11} {r['system']:<12} {r['atoms']:>7} {r['edges']:>9} {1e3 * s:>9.2f} "
              f"{r['atoms'] / s:>10.0f} {1e3 * r['cpu_s']:>9.2f} {1e6 * s / r['atoms']:>8.1f} {r['compile_s']:>9.1f} {r['flops'] / 1e9:>8.2f} "
              f"{r['flops'] / s / (args.peak_gflops * 1e9):>7.1%} {r['peak_mb']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
