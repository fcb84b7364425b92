"""``run_battery``: every check of ``nnpes.testing`` on one model, at one compiled shape."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from nnpes.testing import checks, locality, repulsion
from nnpes.testing.evaluator import battery_evaluator
from nnpes.testing.structures import KINDS, PERIODIC_KINDS, labelled_dataset, make_structure


def _symmetry(ev, seed):
    for kind in KINDS:
        atoms = make_structure(kind, seed + 11)
        checks.check_invariance(ev, atoms)
        checks.check_equivariance(ev, atoms)
        if getattr(ev.pot.config.hparams, "parity", True) is not False:  # SE(3)-only models skip these
            checks.check_parity(ev, make_structure(kind, seed + 12))
            checks.check_o3_equivariance(ev, atoms)
        checks.check_permutation(ev, make_structure(kind, seed + 13))
        if kind in PERIODIC_KINDS:
            checks.check_periodic_images(ev, make_structure(kind, seed + 13))


def _derivatives(ev, seed):
    for kind in KINDS:
        checks.check_forces(ev, make_structure(kind, seed + 14))
    for kind in PERIODIC_KINDS:
        checks.check_stress(ev, make_structure(kind, seed + 15))
        locality.check_extensivity(ev, make_structure(kind, seed + 16))


def _locality(ev, seed):
    a, b = make_structure("molecule", seed + 17), make_structure("molecule", seed + 18)
    b.positions += np.array([ev.pot.cutoff + 2.7 + 0.5, 0.3, -0.2])  # molecules span ≤ 2.6·√3 Å boxes
    locality.check_separated_add(ev, a, b)
    locality.check_cutoff_smoothness(ev)
    y = 1.5  # Å; O leaves H's cutoff while staying inside C's (many-body case)
    x_c = np.sqrt(ev.pot.cutoff**2 - y**2)
    locality.check_cutoff_crossing(ev, lambda x: Atoms("HCO", positions=[[0, 0, 0], [1.5, 0, 0], [x, y, 0.0]]), x_c)


def run_battery(model, hparams: dict | None = None, seed: int = 1, dataset=None) -> list[str]:
    """Run every physics check on ``model`` (a registered name or a model config dict over H, C, O;
    cutoff 3 Å unless given) in float64, on random molecules and random periodic cells (including
    cells smaller than the cutoff). ``hparams`` override the model's defaults (keep them small);
    ``seed`` seeds the parameters and the structures; ``dataset`` (default: EMT-labelled random
    structures) feeds E0/scale and calibration. With ``pair_repulsion`` on it also runs
    ``check_pair_repulsion``. Returns the names of the check groups run; raises AssertionError naming the failed check and the size of its violation."""
    dataset = labelled_dataset() if dataset is None else dataset
    ev = battery_evaluator(model, hparams, seed=seed, dataset=dataset)
    groups = {"symmetry": _symmetry, "derivatives": _derivatives, "locality": _locality}
    for fn in groups.values():
        fn(ev, seed - 1)
    locality.check_padding(ev, [make_structure(k, seed + 18) for k in KINDS])
    locality.check_no_recompile(ev, seed=seed + 19)
    if ev.pot.config.pair_repulsion == "none":
        return [*groups, "padding", "no_recompile"]
    repulsion.check_pair_repulsion(ev)
    return [*groups, "padding", "no_recompile", "pair_repulsion"]
