"""Run a model exported by ``nnpes export MODEL OUT`` with jax alone, without nnpes installed:

    python load_exported.py OUT structures.xyz

Needs jax, numpy and (only to read the structures and build the neighbour list) ase.
OUT/export.json describes the arguments, units and padding convention used below."""

import json
import sys
from pathlib import Path

import jax
import numpy as np


def load(export_dir):
    """``predict(atoms) -> {energy eV, forces eV/Å, stress eV/Å³, energies eV}`` for one ase.Atoms."""
    meta = json.loads((Path(export_dir) / "export.json").read_text())
    if meta["dtype"] == "float64":
        jax.config.update("jax_enable_x64", True)
    exported = jax.export.deserialize(bytearray((Path(export_dir) / meta["artifact"]).read_bytes()))
    call, dtype = jax.jit(exported.call), np.dtype(meta["dtype"])  # jit: one compile per padded size

    def predict(atoms):
        from ase.neighborlist import neighbor_list

        i, j, shifts = neighbor_list("ijS", atoms, meta["cutoff"])  # full list, sorted by centre i
        n, e = len(atoms), len(i)
        nodes, edges = -(-(n + 1) // 8) * 8, -(-max(e, 1) // 64) * 64  # padded sizes: few compiles

        def pad(x, rows, fill=0):
            return np.concatenate([x, np.full((rows - len(x),) + x.shape[1:], fill, x.dtype)])

        out = call(pad(atoms.positions.astype(dtype), nodes), pad(atoms.numbers.astype(np.int32), nodes),
                   pad(j.astype(np.int32), edges, n), pad(i.astype(np.int32), edges, n), pad(shifts.astype(dtype), edges),
                   np.stack([atoms.cell.array, np.eye(3)]).astype(dtype), np.stack([atoms.pbc, [False] * 3]),
                   np.array([n, nodes - n], np.int32), np.array([e, edges - e], np.int32))  # + one padding graph
        return {"energy": float(out["energy"][0]), "forces": np.asarray(out["forces"][:n]),
                "stress": np.asarray(out["stress"][0]), "energies": np.asarray(out["energies"][:n])}

    return predict


if __name__ == "__main__":
    from ase.io import read

    predict = load(sys.argv[1])
    for k, atoms in enumerate(read(sys.argv[2], index=":")):
        out = predict(atoms)
        stress = f", stress (eV/Å³) {out['stress'].ravel()[[0, 4, 8]]}" if atoms.pbc.all() else ""
        print(f"{k}: energy {out['energy']:.6f} eV, max |F| {np.abs(out['forces']).max():.4f} eV/Å{stress}")
