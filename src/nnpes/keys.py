"""The one registry of data fields: name, where it lives in a graph, shape and unit.

Every module refers to these constants instead of spelling strings; predictions use the same names
(``energy``, ``forces``, ``energies``, ``stress``), and ``FIELDS[name].where`` tells the prediction
path how to split a batch per structure. Shapes use
N = nodes (atoms), E = edges (directed neighbour pairs), G = graphs (structures)
of a (possibly padded) batch.
"""

from __future__ import annotations

from dataclasses import dataclass

# nodes
POSITIONS = "positions"  # (N, 3) float, Å
NUMBERS = "numbers"  # (N,) int32, atomic numbers; 0 on padding nodes
FORCES = "forces"  # (N, 3) float, eV/Å (reference label, and predicted)
ENERGIES = "energies"  # (N,) float, eV, predicted per-atom energies (they sum to the energy)

# edges
SHIFTS = "shifts"  # (E, 3) float holding integers: cell images, vector = r_s - r_r + shifts @ cell

# globals
CELL = "cell"  # (G, 3, 3) float, Å, rows are lattice vectors (ase convention)
PBC = "pbc"  # (G, 3) bool
ENERGY = "energy"  # (G,) float, eV (reference label)
STRESS = "stress"  # (G, 3, 3) float, eV/Å³, ase sign convention (positive = tensile)
HAS_ENERGY = "has_energy"  # (G,) float 0/1: label present
HAS_FORCES = "has_forces"  # (G,) float 0/1
HAS_STRESS = "has_stress"  # (G,) float 0/1
WEIGHT = "weight"  # (G,) float, per-structure loss weight (1 by default)


@dataclass(frozen=True)
class Field:
    name: str
    where: str  # "nodes" | "edges" | "globals"
    shape: tuple  # trailing shape after the leading N/E/G axis
    unit: str


FIELDS = {
    f.name: f
    for f in [
        Field(POSITIONS, "nodes", (3,), "Å"),
        Field(NUMBERS, "nodes", (), "atomic number"),
        Field(FORCES, "nodes", (3,), "eV/Å"),
        Field(ENERGIES, "nodes", (), "eV"),
        Field(SHIFTS, "edges", (3,), "cell vectors"),
        Field(CELL, "globals", (3, 3), "Å"),
        Field(PBC, "globals", (3,), "bool"),
        Field(ENERGY, "globals", (), "eV"),
        Field(STRESS, "globals", (3, 3), "eV/Å³"),
        Field(HAS_ENERGY, "globals", (), "0/1"),
        Field(HAS_FORCES, "globals", (), "0/1"),
        Field(HAS_STRESS, "globals", (), "0/1"),
        Field(WEIGHT, "globals", (), "1"),
    ]
}
