"""mlip's JAX MACE (InstaDeep) at MACE's standard size (2 layers, 128 channels, l_max 3, correlation 3,
r_max 5 Å; the same structures as ``benchmarks/inference.py``): the jitted energy + forces call on a
graph built beforehand, float32, random weights (issue 11 §1: the other peer of shared/PERFORMANCE.md).

    python -m venv peers/mlip && peers/mlip/bin/pip install mlip
    OMP_NUM_THREADS=1 taskset -c 0 peers/mlip/bin/python benchmarks/peer_mlip_mace.py --only aspirin water540

Medians after a warm-up call (``benchmarks/timing.py``). Prints ``RESULT {json}`` per structure.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from inference import system  # noqa: E402  (the same structures as ours; ase, numpy)
from timing import repeat  # noqa: E402


def force_call(name: str, repeats: int) -> dict:
    import jax
    from mlip.data import ASEAtomsReader, GraphDatasetBuilderConfig, SingleGraphDatasetBuilder
    from mlip.data.dataset_info import DatasetInfo
    from mlip.models import ForceField, Mace
    from mlip.models.mace.config import MaceConfig

    atoms = system(name)
    zs = sorted(set(int(z) for z in atoms.numbers))
    info = DatasetInfo(atomic_energies_map={z: 0.0 for z in zs}, graph_cutoff_angstrom=5.0, avg_num_neighbors=20.0)
    # node_symmetry 1: hidden features 128x0e+128x1o, the standard size (its default keeps l up to l_max 3)
    force_field = ForceField.from_mlip_network(Mace(MaceConfig(node_symmetry=1), info), seed=0)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(force_field.params))
    builder = SingleGraphDatasetBuilder(
        ASEAtomsReader([atoms]),
        GraphDatasetBuilderConfig(graph_cutoff_angstrom=5.0, batch_size=1, discard_graphs_without_edges=False),
        dataset_info=info)
    (graph,) = list(builder.get_dataset(prefetch=False))
    call = jax.jit(force_field)
    t = repeat(lambda: call(graph).forces, repeats)
    return dict(system=name, atoms=len(atoms), seconds=t.median, cpu_seconds=t.cpu_median, params=int(n_params),
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["aspirin", "water540"])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    for name in args.only:
        print("RESULT " + json.dumps(force_call(name, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
