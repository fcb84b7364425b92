"""mlip's JAX MACE (InstaDeep) at MACE's standard size (2 layers, 128 channels, l_max 3, correlation 3,
r_max 5 Å; the same structures as ``benchmarks/inference.py``): the jitted energy + forces call on a
graph built beforehand, and ``train``: one jitted Adam step on MSE(E) + 10·MSE(F) over the 8
displaced aspirins of ``inference.py``'s training step, in one batch; float32, random weights
(issue 11 §1: the other peer of shared/PERFORMANCE.md).

    python -m venv peers/mlip && peers/mlip/bin/pip install mlip
    OMP_NUM_THREADS=1 taskset -c 0 peers/mlip/bin/python benchmarks/peer_mlip_mace.py --only aspirin water540 train

Medians after a warm-up call (``benchmarks/timing.py``). Prints ``RESULT {json}`` per structure.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from inference import displaced_aspirins, system  # noqa: E402  (the same structures as ours; ase, numpy)
from timing import repeat  # noqa: E402


def mlip_mace(frames: list):
    """(force field, one batched graph of ``frames``, parameter count) at the standard size."""
    import jax
    from mlip.data import ASEAtomsReader, GraphDatasetBuilderConfig, SingleGraphDatasetBuilder
    from mlip.data.dataset_info import DatasetInfo
    from mlip.models import ForceField, Mace
    from mlip.models.mace.config import MaceConfig

    zs = sorted(set(int(z) for a in frames for z in a.numbers))
    info = DatasetInfo(atomic_energies_map={z: 0.0 for z in zs}, graph_cutoff_angstrom=5.0, avg_num_neighbors=20.0)
    # node_symmetry 1: hidden features 128x0e+128x1o, the standard size (its default keeps l up to l_max 3)
    force_field = ForceField.from_mlip_network(Mace(MaceConfig(node_symmetry=1), info), seed=0)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(force_field.params))
    builder = SingleGraphDatasetBuilder(
        ASEAtomsReader(frames),
        # batch_size counts the padding graph, as in jraph
        GraphDatasetBuilderConfig(graph_cutoff_angstrom=5.0, batch_size=len(frames) + 1,
                                  discard_graphs_without_edges=False),
        dataset_info=info)
    (graph,) = list(builder.get_dataset(prefetch=False))
    assert int(graph.graph_mask().sum()) == len(frames), "one batch must hold every frame"
    return force_field, graph, int(n_params)


def force_call(name: str, repeats: int) -> dict:
    import jax

    atoms = system(name)
    force_field, graph, n_params = mlip_mace([atoms])
    call = jax.jit(force_field)
    t = repeat(lambda: call(graph).forces, repeats)
    return dict(system=name, atoms=len(atoms), seconds=t.median, cpu_seconds=t.cpu_median, params=n_params,
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def train_step(repeats: int) -> dict:
    """One Adam step over 8 displaced aspirins with random labels (values do not affect speed),
    the loss of ``inference.py``'s ``train_workload`` on mlip's padded batch (masked)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    frames = displaced_aspirins()
    force_field, graph, n_params = mlip_mace(frames)
    rng = np.random.default_rng(1)
    node_mask, graph_mask = graph.node_mask(), graph.graph_mask()  # numpy here; traced inside the step
    f_ref = jnp.asarray(rng.normal(0.0, 1.0, (node_mask.shape[0], 3)), jnp.float32)
    e_ref = jnp.asarray(rng.normal(size=graph_mask.shape[0]), jnp.float32)
    n_atoms = sum(len(a) for a in frames)
    opt = optax.adam(1e-3)

    def loss_fn(params, graph):  # the graph an argument: mlip indexes its counts with traced values
        out = force_field.predictor.apply(params, graph).to_prediction()
        le = jnp.sum(jnp.where(graph_mask, (out.energy - e_ref) ** 2, 0.0)) / len(frames)
        lf = jnp.sum(jnp.where(node_mask[:, None], (out.forces - f_ref) ** 2, 0.0)) / (3 * n_atoms)
        return le + 10.0 * lf

    @jax.jit
    def step(params, state, graph):
        loss, grads = jax.value_and_grad(loss_fn)(params, graph)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params = force_field.params
    carry = [params, opt.init(params)]

    def one():
        carry[0], carry[1], loss = step(*carry, graph)
        return loss

    t = repeat(one, repeats)
    return dict(system="8 x aspirin", atoms=n_atoms, seconds=t.median, cpu_seconds=t.cpu_median, params=n_params,
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["aspirin", "water540", "train"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for name in args.only:
        result = train_step(args.repeats) if name == "train" else force_call(name, args.repeats)
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
