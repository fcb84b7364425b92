"""An ase Calculator around a Potential, so ase optimisers, MD and NEB work unchanged."""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class NNPESCalculator(Calculator):
    """ase Calculator: energy and free_energy (eV), forces (N,3) eV/Å, per-atom energies (N,) eV,
    stress (6,) eV/Å³ in ase's Voigt order xx yy zz yz xz xy (fully periodic cells only, and only
    when asked for: the strain derivative costs a second backward pass).

    Build with ``Potential.calculator()``. Each call runs the potential's jitted function; structures
    of similar size share one compiled shape.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, potential, **kwargs):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        if want_stress and not np.all(self.atoms.pbc):
            from ase.calculators.calculator import PropertyNotImplementedError

            raise PropertyNotImplementedError(
                f"stress needs a cell periodic in all three directions; pbc is {self.atoms.pbc.tolist()}"
            )
        out = self.potential.predict(self.atoms, compute_stress=want_stress)
        self.results = {
            "energy": out["energy"],
            "free_energy": out["energy"],
            "forces": out["forces"],
            "energies": out["energies"],
        }
        if want_stress:
            s = out["stress"]
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
