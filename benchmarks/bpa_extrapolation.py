"""3BPA extrapolation (issue 11 §3): a model trained on train_300K.xyz evaluated on the frames of
train_mixedT.xyz (300–1200 K geometries) that are not in train_300K.xyz (31 of its 500 are).

    python benchmarks/bpa_extrapolation.py benchmarks/models/3bpa_nequip

Prints the held-out frames' errors (nnpes.training.evaluate.format_metrics) and ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

DATA = "/work/shared/data/3bpa"


def held_out_mixed_t(data: str = DATA):
    """The train_mixedT frames whose positions (to 1e-4 Å) match no train_300K frame."""
    from nnpes import read_structures

    seen = {np.round(a.positions, 4).tobytes() for a in read_structures(f"{data}/train_300K.xyz")}
    mixed = read_structures(f"{data}/train_mixedT.xyz")
    return [a for a in mixed if np.round(a.positions, 4).tobytes() not in seen], len(mixed)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a saved potential or a training run directory")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args()
    from nnpes import load_potential
    from nnpes.training.evaluate import evaluate, format_metrics

    frames, n_mixed = held_out_mixed_t(args.data)
    metrics = evaluate(load_potential(args.model), frames)
    print(f"train_mixedT.xyz: {len(frames)} of {n_mixed} frames not in train_300K.xyz")
    print(format_metrics(metrics))
    print("RESULT " + json.dumps({"n_frames": len(frames), **{k: metrics[k] for k in
                                  ("energy_per_atom_meV", "energy_per_structure_meV", "forces_meV_per_A")}}))


if __name__ == "__main__":
    main()
