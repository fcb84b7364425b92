"""The Potential: the one object users hold (config + flax module + parameters)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import flax.serialization
import jax.numpy as jnp
import numpy as np
import yaml
from ase import Atoms

from nnpes.config.model import ModelConfig
from nnpes.files import atomic_write, atomic_write_dir, yaml_safe
from nnpes.graph.distances import warn_close_contacts
from nnpes.models.energy import EnergyModel
from nnpes.models.inputs import species_table
from nnpes.potential.card import CARD_FILE, ModelCard, count_parameters
from nnpes.potential.compiled import TraceCounted, cached, model_key
from nnpes.potential.energy import energy_forces_stress
from nnpes.potential.predict import check_structure, predict_structures

PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "config.yaml"


@dataclass(repr=False)
class Potential:
    """Config + module + parameters. Build with ``nnpes.build_potential`` or ``nnpes.load_potential``.

    ``params`` is the full flax variables dict ({"params": ..., optionally "constants": ...}); only
    ``params["params"]`` is trained. ``card``: the model card (``nnpes.potential.card.ModelCard``)
    of a loaded or saved potential: versions, date, training data, test errors; None for a fresh
    potential and for models saved before cards existed.
    """

    config: ModelConfig
    params: Any
    module: EnergyModel = None
    card: ModelCard | None = field(default=None, compare=False)

    def __post_init__(self):
        if self.module is None:
            from nnpes.potential.build import make_module

            self.module = make_module(self.config)
        self.table = species_table(self.config.numbers)
        module, table = self.module, self.table
        self._compiled = cached(model_key(module, self.config.elements) + ("predict",), lambda: TraceCounted(
            lambda v, g, stress: energy_forces_stress(module, table, v, g, stress), static_argnums=2))

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def elements(self) -> list[str]:
        return list(self.config.elements)

    @property
    def dtype(self):
        return jnp.float64 if self.config.dtype == "float64" else jnp.float32

    @property
    def n_parameters(self) -> int:
        """Number of trained parameters (scalars in ``params["params"]``)."""
        return count_parameters(self.params)

    def __repr__(self) -> str:
        c = self.config
        return (f"Potential({c.name}, elements=[{', '.join(c.elements)}], cutoff={float(c.cutoff)} Å, "
                f"{self.n_parameters:,} parameters, {c.dtype})")

    @property
    def n_compiles(self) -> int:
        """How many times ``predict``'s jitted function has been traced (one per padded shape)."""
        return self._compiled.n_traces

    def energy_forces_stress(self, params, graph, compute_stress: bool = True) -> dict:
        """Pure function of (variables, padded device graph); jit it yourself or use ``predict``."""
        return energy_forces_stress(self.module, self.table, params, graph, compute_stress)

    def device_graph(self, atoms):
        """``atoms`` (one or a list) as a padded batch on the device in the model's dtype, at the
        model's cutoff: the ``graph`` argument of ``energy_forces_stress``."""
        from nnpes.graph.padding import device_graph

        return device_graph(atoms, self.cutoff, self.dtype)

    def replace(self, params) -> "Potential":
        """A copy with new variables; shares the module and the compiled functions. It has no
        card: the card described the old parameters."""
        new = copy.copy(self)
        new.params = params
        new.card = None
        return new

    # ---- prediction --------------------------------------------------------------------------

    def check_elements(self, atoms: Atoms, index: int | None = None) -> None:
        """ValueError naming an element the model does not know, an empty structure or a
        non-finite position or cell (they would give NaN, not an error)."""
        check_structure(atoms, self.config.elements, index)

    def predict(self, atoms: Atoms | Sequence[Atoms], compute_stress: bool | None = None):
        """Energy (eV), forces (N,3) eV/Å, per-atom ``energies`` (N,) eV and, for fully periodic
        structures, ``stress`` (3,3) eV/Å³ (ase sign). One Atoms → dict; a list → list of dicts.

        Structures are batched and padded to a few bucket shapes, so predicting many structures
        of similar size compiles once. ``compute_stress=None``: only if some structure is periodic.
        Two atoms closer than the training data's shortest distance of their element pair (model
        card) give one ``ShortDistanceWarning`` per call, naming the closest such pair.
        """
        single = isinstance(atoms, Atoms)
        atoms_list = [atoms] if single else list(atoms)
        for k, a in enumerate(atoms_list):
            self.check_elements(a, None if single else k)
        if compute_stress is None:
            compute_stress = any(bool(np.all(a.pbc)) for a in atoms_list)
        stress = bool(compute_stress)
        results = predict_structures(lambda g: self._compiled(self.params, g, stress), atoms_list, self.cutoff,
                                     self.dtype, seen=self._compiled.shapes_seen(stress),
                                     check_graphs=lambda graphs: self.warn_close_contacts(graphs, stacklevel=5))
        return results[0] if single else results

    @property
    def shortest_distances(self) -> dict[str, float] | None:
        """Å per element pair ("H-C", in the model's element order) in the training data, from the
        model card (a fine-tuned model's: its data and its ancestors'); None if not recorded."""
        return self.card.shortest_distances() if self.card is not None else None

    def warn_close_contacts(self, graphs, stacklevel: int = 2) -> list:
        """One ``ShortDistanceWarning`` if a pair in ``graphs`` (host graphs at the model's cutoff)
        is closer than ``shortest_distances``; returns the ``CloseContact``s, one per structure."""
        return warn_close_contacts(graphs, self.shortest_distances, self.elements, self.cutoff, stacklevel + 1)

    def calculator(self, **kwargs):
        """An ase Calculator (energy, free_energy, forces, stress, energies)."""
        from nnpes.potential.calculator import NNPESCalculator

        return NNPESCalculator(self, **kwargs)

    def md_functions(self, atoms: Atoms, skin: float = 0.5, capacity_multiplier: float = 1.25,
                     temperature: float = 300.0, variable_cell: bool = False):
        """``neighbor_fn, energy_fn`` in jax-md's conventions for ``atoms``' species, cell and pbc
        (skin Å; buffers sized for MD at ``temperature`` K; ``variable_cell`` for NPT); forces:
        ``energy_fn.force_fn``. See ``nnpes.md.md_functions``."""
        from nnpes.md.functions import md_functions

        return md_functions(self, atoms, skin=skin, capacity_multiplier=capacity_multiplier,
                            temperature=temperature, variable_cell=variable_cell)

    # ---- persistence -------------------------------------------------------------------------

    def to_config(self) -> dict:
        """Full config: ``{"nnpes_version": ..., "model": {...}}`` (a valid build_potential input)."""
        from nnpes import __version__

        return {"nnpes_version": __version__, "model": yaml_safe(self.config.to_dict())}

    def save(self, path, card: ModelCard | None = None) -> Path:
        """Write a directory with ``config.yaml``, ``params.msgpack`` and the model card
        ``card.yaml``, as a whole: over an existing model the new directory is swapped in at once
        (``nnpes.files.atomic_write_dir``), so a crash leaves the old model or the new, never a
        mix. ``card`` None: the potential's own card if it has one (loaded, or saved before), else a
        new one (versions, date, model summary, units). The saved card becomes ``self.card``."""
        card = card or self.card or ModelCard.of(self)

        def fill(d: Path) -> None:
            atomic_write(d / PARAMS_FILE, flax.serialization.to_bytes(self.params))
            atomic_write(d / CONFIG_FILE, yaml.safe_dump(self.to_config(), sort_keys=False).encode())
            card.save(d)

        path = atomic_write_dir(path, fill, (PARAMS_FILE, CONFIG_FILE, CARD_FILE))
        self.card = card
        return path
