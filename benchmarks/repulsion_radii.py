"""Test errors of one trained model with the ZBL term off, with covalent r_out, and with r_out at
several fractions of the training data's shortest distance of each pair (issue 15): where the
term's switch reaches into the test frames, their errors grow.

    python benchmarks/repulsion_radii.py runs/my_run ../shared/data/rmd17/rmd17_ethanol_test_01.npz --energy-unit kcal/mol
"""

from __future__ import annotations

import argparse
import json
import warnings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="saved potential or run directory (with shortest distances in its model card)")
    p.add_argument("test", help="labelled test structures")
    p.add_argument("--energy-unit", default="eV")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.95, 0.9, 0.85])
    args = p.parse_args(argv)

    from nnpes.data import read_structures
    from nnpes.models.repulsion import DATA_MARGIN, OUTER, outer_radii_from_data
    from nnpes.potential import load_potential
    from nnpes.potential.build import saved_model_dir
    from nnpes.testing import with_pair_repulsion
    from nnpes.training.evaluate import error_metrics, predict_and_compare

    warnings.simplefilter("ignore")  # test frames closer than the training data warn: expected here
    pot = load_potential(saved_model_dir(args.model))
    test = read_structures(args.test, energy_unit=args.energy_unit)
    shortest = pot.shortest_distances or {}

    variants = {"off": with_pair_repulsion(pot, "none"),
                f"covalent ({OUTER} (R_i + R_j))": with_pair_repulsion(pot, "zbl")}
    for f in args.fractions:  # outer_radii_from_data applies DATA_MARGIN: undo it to get f exactly
        scaled = {k: f / DATA_MARGIN * v for k, v in shortest.items()}
        variants[f"{f} × shortest"] = with_pair_repulsion(pot, "zbl", outer_radii_from_data(scaled, pot.config.numbers))
    for name, v in variants.items():
        m = error_metrics(predict_and_compare(v, test, v.predict(test)))
        print(json.dumps({"r_out": name, "E_mae_meV_atom": round(m["energy_per_atom_meV"]["mae"], 4),
                          "F_mae_meV_A": round(m["forces_meV_per_A"]["mae"], 3),
                          "F_rmse_meV_A": round(m["forces_meV_per_A"]["rmse"], 3), "outer": v.config.pair_repulsion_outer}))


if __name__ == "__main__":
    main()
