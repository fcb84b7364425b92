"""mace-torch's MACE at the standard size, timed as ``benchmarks/inference.py --model mace`` times ours.

Run in mace-torch's own venv (``python -m venv peers/mace && peers/mace/bin/pip install
torch==2.13.0 mace-torch``), ideally in the same session and load as ours:

    peers/mace/bin/python benchmarks/peer_mace_torch.py --only aspirin water540 train
    peers/mace/bin/python benchmarks/peer_mace_torch.py --only --md-sizes 100 1000   # MD, as md.py's

MD (``--md-sizes``): ase's VelocityVerlet, 1 fs, with mace-torch's ``MACECalculator`` on the fcc Cu
boxes of ``benchmarks/md.py`` (same sizes, same 300 K start), the model above for Cu alone: what
a researcher running MACE MD through ase pays per step, median over steps after two warm-up steps.

Model: 2 layers, 128x0e+128x1o, max_ell 3, correlation 3, r_max 5 Å, 8 Bessel, radial MLP
[64, 64, 64], 16x0e readout MLP, elements H, C, N, O (as ours), float32. The graph is built once
outside the timed region; each timed call is the model alone (energy + forces by autograd), median
of --repeats after one warm-up. Train step: 8 displaced aspirins in one batch, MSE(E) + 10·MSE(F),
Adam. Each system in a fresh process, so peak RSS is that system's alone. Prints ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np

# e3nn 0.4 (mace-torch's) loads its own constants file with torch.load; torch ≥ 2.6 refuses that
# by default (weights_only), so allow it for this trusted package file.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
sys.path.insert(0, __file__.rsplit("/", 1)[0])
from inference import cu_box, displaced_aspirins, system  # noqa: E402  (the same structures as ours; ase, numpy)
from timing import repeat  # noqa: E402  (pure Python)

Z = [1, 6, 7, 8]


def build(z=Z):
    import torch
    from e3nn import o3
    from mace import modules

    torch.manual_seed(0)
    return modules.MACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2, num_elements=len(z), hidden_irreps=o3.Irreps("128x0e+128x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(z)), avg_num_neighbors=20.0,
        atomic_numbers=z, correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64, 64],
    )


def batch_of(atoms_list):
    from mace import data, tools
    from mace.tools import torch_geometric

    table = tools.AtomicNumberTable(Z)
    graphs = [data.AtomicData.from_config(data.config_from_atoms(a), z_table=table, cutoff=5.0) for a in atoms_list]
    return next(iter(torch_geometric.dataloader.DataLoader(graphs, batch_size=len(graphs), shuffle=False)))


def md_step_time(n_atoms: int, steps: int) -> tuple[float, int, int]:
    """Median seconds per ase VelocityVerlet step (1 fs) of mace-torch MACE on ``cu_box(n_atoms)``."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from mace.calculators import MACECalculator

    model = build(z=[29])
    atoms = cu_box(n_atoms)
    atoms.calc = MACECalculator(models=[model], default_dtype="float32")
    MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    sec = repeat(lambda: dyn.run(1), max(steps, 1)).median
    return sec, len(atoms), sum(p.numel() for p in model.parameters())


def child(name, repeats):
    import torch

    torch.set_default_dtype(torch.float32)
    if name.startswith("md"):
        sec, n_atoms, n_params = md_step_time(int(name[2:]), repeats * 4 if int(name[2:]) < 5000 else 2)
        ns_day = 1e-6 / sec * 86400
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(dict(system=f"md Cu {n_atoms}", seconds=sec, ns_per_day=ns_day, params=n_params,
                                          peak_mb=peak, threads=torch.get_num_threads())))
        return
    model = build()
    n_params = sum(p.numel() for p in model.parameters())
    if name == "train":
        b = batch_of(displaced_aspirins()).to_dict()
        e_ref, f_ref = torch.randn(8), torch.randn(b["positions"].shape)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def call():
            opt.zero_grad()
            out = model(b, training=True, compute_force=True)
            loss = torch.mean((out["energy"] - e_ref) ** 2) + 10.0 * torch.mean((out["forces"] - f_ref) ** 2)
            loss.backward()
            opt.step()
    else:
        atoms = system(name)
        b = batch_of([atoms]).to_dict()
        model.eval()

        def call():
            out = model(b, training=False, compute_force=True)
            out["forces"].sum().item()
    sec = repeat(call, repeats).median
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(dict(system=name, seconds=sec, params=n_params, peak_mb=peak, threads=torch.get_num_threads())))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=["aspirin", "water540", "train"])
    ap.add_argument("--md-sizes", type=int, nargs="*", default=[], help="MD on fcc Cu boxes of about these many atoms")
    args = ap.parse_args()
    if args.one:
        return child(args.one, args.repeats)
    for name in args.only + [f"md{n}" for n in args.md_sizes]:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--repeats", str(args.repeats)],
                             capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        print(lines[-1] if lines else f"{name}: failed\n{out.stderr[-1500:]}", flush=True)


if __name__ == "__main__":
    main()
