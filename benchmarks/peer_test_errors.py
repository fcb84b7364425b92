"""Test-set errors of a peer's trained model, as ``nnpes evaluate`` reports ours (issue 11 §3):
energy MAE per structure (meV) and force MAE per component (meV/Å) on an extxyz file with
``REF_energy`` / ``REF_forces`` (eV, eV/Å; the peer runs' own test files, written by
``benchmarks/peer_mace_torch_train.py``). Run in the peer's venv:

    peers/nequip/bin/python benchmarks/peer_test_errors.py --nequip-ckpt benchmarks/out/peer_ethanol/nequip_run/best.ckpt \\
        benchmarks/out/peer_ethanol/test.xyz

nequip's checkpoint is loaded eagerly (``NequIPCalculator._from_saved_model``: TorchScript
compilation is gone in torch ≥ 2.10, and AOT Inductor needs a compiler). Prints ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def calculator(args):
    if args.nequip_ckpt:
        from nequip.integrations.ase import NequIPCalculator

        return NequIPCalculator._from_saved_model(args.nequip_ckpt, device="cpu")
    raise SystemExit("give --nequip-ckpt")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("test", help="extxyz with REF_energy and REF_forces")
    ap.add_argument("--nequip-ckpt")
    args = ap.parse_args()
    import ase.io

    calc = calculator(args)
    de, df = [], []
    for atoms in ase.io.read(args.test, ":"):
        e_ref, f_ref = atoms.info["REF_energy"], atoms.arrays["REF_forces"]
        atoms.calc = calc
        de.append(atoms.get_potential_energy() - e_ref)
        df.append(atoms.get_forces() - f_ref)
    de, df = np.array(de), np.concatenate(df)
    out = {"n_frames": len(de), "energy_mae_meV": 1e3 * np.mean(np.abs(de)), "energy_rmse_meV": 1e3 * np.sqrt(np.mean(de**2)),
           "forces_mae_meV_per_A": 1e3 * np.mean(np.abs(df)), "forces_rmse_meV_per_A": 1e3 * np.sqrt(np.mean(df**2))}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
