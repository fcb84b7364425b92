"""``nnpes export``: a potential's energy/forces/stress function as a serialized ``jax.export``
artifact (StableHLO with the parameters baked in) that loads and runs with jax alone, without nnpes
(``jax.export.deserialize(bytes).call(...)``; docs/load_exported.py is a complete example).

The exported function takes plain arrays of one padded batch (``INPUTS``: positions, atomic numbers,
the neighbour list as senders/receivers/cell shifts, cells, pbc, atoms and edges per structure) and
returns ``OUTPUTS`` (energy per structure, forces, stress, per-atom energies).

Shapes are symbolic: one artifact serves every n_node, n_edge, n_graph (each ≥ 1); jax specialises
and compiles it for each new combination of sizes at call time, so callers pad to a few sizes.
Every built-in model traces with symbolic sizes (NequIP takes its unblocked path, which is valid for
every size), so no ladder of fixed-shape artifacts is needed; a model whose Python code needs a
concrete size fails at export with jax's message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import jraph

from nnpes import keys
from nnpes.files import atomic_write
from nnpes.potential.card import ModelCard, package_versions
from nnpes.potential.energy import energy_forces_stress

ARTIFACT_FILE = "energy_forces_stress.jaxexport"
META_FILE = "export.json"
FORMAT, FORMAT_VERSION = "nnpes-jax-export", 1
DEFAULT_PLATFORMS = ("cpu", "cuda")
SIZES = ("n_node", "n_edge", "n_graph")


@dataclass(frozen=True)
class Array:
    """One argument or result: shape in the symbolic sizes, dtype ("float": the model's), unit."""

    name: str
    shape: tuple
    dtype: str
    unit: str
    description: str

    def to_dict(self, float_dtype: str) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": float_dtype if self.dtype == "float" else self.dtype,
                "unit": self.unit, "description": self.description}


INPUTS = (
    Array(keys.POSITIONS, ("n_node", 3), "float", "Å", "atom positions; padding nodes at 0"),
    Array(keys.NUMBERS, ("n_node",), "int32", "", "atomic numbers, each one of the model's elements; 0 on padding nodes"),
    Array("senders", ("n_edge",), "int32", "", "neighbour j of each directed edge (both i→j and j→i are listed)"),
    Array("receivers", ("n_edge",), "int32", "", "centre i of each edge, sorted ascending (stable)"),
    Array(keys.SHIFTS, ("n_edge", 3), "float", "cell vectors",
          "integer cell images S: edge vector = positions[j] - positions[i] + S @ cell (ase's neighbor_list 'S')"),
    Array(keys.CELL, ("n_graph", 3, 3), "float", "Å", "rows are lattice vectors (ase); identity for padding graphs"),
    Array(keys.PBC, ("n_graph", 3), "bool", "", "periodic directions; stress is computed where all three are"),
    Array("n_node", ("n_graph",), "int32", "", "atoms per structure (the first padding graph holds the padding nodes)"),
    Array("n_edge", ("n_graph",), "int32", "", "edges per structure (the first padding graph holds the padding edges)"),
)
OUTPUTS = (
    Array(keys.ENERGY, ("n_graph",), "float", "eV", "energy per structure; 0 for padding graphs"),
    Array(keys.FORCES, ("n_node", 3), "float", "eV/Å", "forces, -dE/dR"),
    Array(keys.STRESS, ("n_graph", 3, 3), "float", "eV/Å³",
          "stress (1/V) dE/dε, ase sign (positive = tensile); zero unless all three directions are periodic"),
    Array(keys.ENERGIES, ("n_node",), "float", "eV", "per-atom energies (they sum to the energy)"),
)
PADDING = (
    "nnpes's (jraph's) convention: after the real structures come one or more padding graphs; the first "
    "padding graph owns every padding node and edge, the others are empty, so n_node > real atoms and "
    "n_graph > real structures (at least one padding node and graph), and n_edge >= 1. Padding nodes have "
    "atomic number 0 and position 0; padding edges join the first padding node to itself with shift 0; "
    "padding graphs have an identity cell and pbc false. sum(n_node) and sum(n_edge) equal the array "
    "lengths. Outputs on padding are zero. Each new (n_node, n_edge, n_graph) compiles once: pad to a few sizes."
)
NEIGHBOURS = (
    "a full neighbour list at the model's cutoff: every ordered pair (i, j) with |r_j - r_i + S @ cell| < "
    "cutoff, periodic images and an atom's own images in small cells included, i = receiver, j = sender, "
    "sorted by receiver; e.g. ase.neighborlist.neighbor_list('ijS', atoms, cutoff)"
)


def exported_function(potential):
    """The function that is exported: ``INPUTS`` as arrays → dict of ``OUTPUTS``, with the
    potential's parameters as constants."""
    module, table, params = potential.module, potential.table, potential.params

    def energy_forces_stress_of_arrays(positions, numbers, senders, receivers, shifts, cell, pbc, n_node, n_edge):
        graph = jraph.GraphsTuple(
            nodes={keys.POSITIONS: positions, keys.NUMBERS: numbers}, edges={keys.SHIFTS: shifts},
            globals={keys.CELL: cell, keys.PBC: pbc}, senders=senders, receivers=receivers, n_node=n_node, n_edge=n_edge)
        out = energy_forces_stress(module, table, params, graph, compute_stress=True)
        return {a.name: out[a.name] for a in OUTPUTS}

    return energy_forces_stress_of_arrays


def input_specs(dtype) -> list[jax.ShapeDtypeStruct]:
    """``INPUTS`` as ``jax.ShapeDtypeStruct`` with symbolic sizes and floats in ``dtype``."""
    sizes = dict(zip(SIZES, jax.export.symbolic_shape(", ".join(SIZES))))
    return [jax.ShapeDtypeStruct(tuple(sizes.get(d, d) for d in a.shape), dtype if a.dtype == "float" else jnp.dtype(a.dtype))
            for a in INPUTS]


def export_potential(potential, out_dir, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> Path:
    """Write ``out_dir/energy_forces_stress.jaxexport`` (the serialized ``jax.export.Exported``)
    and ``out_dir/export.json`` (argument order, shapes, dtypes, units, padding and neighbour-list
    conventions, elements, cutoff and the model card). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    exported = jax.export.export(jax.jit(exported_function(potential)), platforms=tuple(platforms))(
        *input_specs(potential.dtype))
    float_dtype = potential.config.dtype
    c = potential.config
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "artifact": ARTIFACT_FILE,
        "platforms": list(exported.platforms), "calling_convention_version": exported.calling_convention_version,
        "exported_with": package_versions(("nnpes", "jax", "jaxlib")),
        "dtype": float_dtype, "elements": list(c.elements), "atomic_numbers": list(c.numbers), "cutoff": float(c.cutoff),
        "sizes": {"symbolic": list(SIZES), "min": 1},
        "inputs": [a.to_dict(float_dtype) for a in INPUTS],
        "outputs": [a.to_dict(float_dtype) for a in OUTPUTS],
        "padding": PADDING, "neighbour_list": NEIGHBOURS,
        "card": (potential.card or ModelCard.of(potential)).to_dict(),
    }
    atomic_write(out_dir / ARTIFACT_FILE, bytes(exported.serialize()))
    atomic_write(out_dir / META_FILE, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode())
    return out_dir
