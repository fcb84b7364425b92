"""MD with mlip (InstaDeep's JAX library) in its own jax-md loop, on the fcc Cu boxes of
``benchmarks/md.py``, the standard NequIP size (4 layers, 32x0e+32x0o+32x1o+32x1e, l_max 1, 8 Bessel,
radial MLP 1×128, r_c 5 Å), random weights, float32, velocity Verlet, 1 fs (issue 13 §1: the JAX
peer's own MD loop, the same sizes as ours).

    python -m venv peers/mlip && peers/mlip/bin/pip install mlip
    OMP_NUM_THREADS=1 taskset -c 0 peers/mlip/bin/python benchmarks/peer_mlip_md.py --sizes 100 1000

mlip runs ``num_episodes`` jitted episodes of ``--block`` steps (a ``lax.fori_loop``) and calls its
loggers after each; the time per step is the median gap between logger calls after the first
(compilation) episode, divided by the episode's steps. Prints ``RESULT {json}`` per size.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from inference import cu_box  # noqa: E402  (the same boxes as md.py's; ase, numpy)


def step_time(n_atoms: int, block: int, episodes: int) -> dict:
    from mlip.data.dataset_info import DatasetInfo
    from mlip.models import ForceField, Nequip
    from mlip.models.nequip.config import NequipConfig
    from mlip.simulation.configs import JaxMDSimulationConfig
    from mlip.simulation.enums import MDIntegrator
    from mlip.simulation.jax_md import JaxMDSimulationEngine

    atoms = cu_box(n_atoms)
    info = DatasetInfo(atomic_energies_map={29: 0.0}, graph_cutoff_angstrom=5.0, avg_num_neighbors=45.0)
    config = NequipConfig(num_layers=4, target_irreps="32x0e + 32x0o + 32x1o + 32x1e", l_max=1, num_rbf=8,
                          radial_mlp_hidden=[128])
    force_field = ForceField.from_mlip_network(Nequip(config, info), seed=0)
    n_params = sum(x.size for x in __import__("jax").tree_util.tree_leaves(force_field.params))
    md = JaxMDSimulationConfig(md_integrator=MDIntegrator.NVE_VELOCITY_VERLET, num_steps=block * episodes,
                               num_episodes=episodes, timestep_fs=1.0, temperature_kelvin=300.0,
                               box=[float(x) for x in atoms.cell.lengths()], snapshot_interval=block)
    engine = JaxMDSimulationEngine(atoms, force_field, md)
    stamps = [time.perf_counter()]
    engine.attach_logger(lambda state: stamps.append(time.perf_counter()))
    engine.run()
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # after the first (compiling) episode
    sec = statistics.median(gaps) / block
    return dict(system=f"mlip md Cu {len(atoms)}", seconds=sec, ns_per_day=1e-6 / sec * 86400, params=int(n_params),
                first_episode_s=stamps[1] - stamps[0], episodes_timed=len(gaps),
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--episodes", type=int, default=4, help="episodes per size, the first one compiles")
    args = ap.parse_args()
    for n in args.sizes:
        block = max(1, min(20, 20000 // n))  # md.py's block lengths
        print("RESULT " + json.dumps(step_time(n, block, args.episodes)), flush=True)


if __name__ == "__main__":
    main()
