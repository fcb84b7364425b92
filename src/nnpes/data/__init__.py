"""Data layer: read labelled structures (extxyz and all ase.io formats, MD17/rMD17 npz, ASE db,
mlearn/pymatgen JSON) into ase.Atoms in Å / eV / eV/Å / eV/Å³, validate every frame, and split."""

from nnpes.data.readers import ENERGY_UNITS, read_structures
from nnpes.data.splits import bootstrap_indices, read_index_file, split_indices
from nnpes.data.validate import DataError, validate_structures

__all__ = [
    "DataError",
    "bootstrap_indices",
    "ENERGY_UNITS",
    "read_index_file",
    "read_structures",
    "split_indices",
    "validate_structures",
]
