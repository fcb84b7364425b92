"""The physics battery, for any registered model (``nnpes.models.register``).

    from nnpes.testing import run_battery
    run_battery("my_model", hparams={"width": 8})        # AssertionError on the first violation

or check one property of a ``Potential`` on your own structures (float64 recommended):

    from nnpes.testing import Evaluator, check_forces, check_invariance
    ev = Evaluator(pot)                                    # one compiled shape shared by the checks
    check_invariance(ev, atoms); check_forces(ev, atoms, h=1e-5)

Every check accepts a ``Potential`` or an ``Evaluator`` and raises AssertionError naming the check
and the size of the violation. No pytest needed.
"""

from nnpes.testing.battery import run_battery  # noqa: F401
from nnpes.testing.checks import (  # noqa: F401
    assert_close, check_equivariance, check_forces, check_invariance, check_o3_equivariance, check_parity, check_periodic_images,
    check_permutation, check_stress,
)
from nnpes.testing.evaluator import PAD, Evaluator, battery_config, battery_evaluator  # noqa: F401
from nnpes.testing.locality import (  # noqa: F401
    check_cutoff_crossing, check_cutoff_smoothness, check_extensivity, check_no_recompile, check_padding,
    check_separated_add,
)
from nnpes.testing.repulsion import check_pair_repulsion, with_pair_repulsion, without_repulsion  # noqa: F401
from nnpes.testing.structures import (  # noqa: F401
    CUTOFF, ELEMENTS, KINDS, PERIODIC_KINDS, labelled_dataset, make_structure, random_cell, random_molecule,
    random_rotation, transformed,
)
