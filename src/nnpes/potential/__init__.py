"""The Potential (config + module + parameters) and everything that evaluates it on structures:
the pure energy/forces/stress function, the shared prediction path, building and loading, the ase
Calculator, the model card saved with every potential (``card``) and its ``jax.export`` (``export``)."""

from nnpes.models.inputs import species_table  # noqa: F401
from nnpes.potential.energy import energy_forces_stress, per_atom_energies  # noqa: F401
from nnpes.potential.card import CARD_FILE, ModelCard  # noqa: F401
from nnpes.potential.potential import CONFIG_FILE, PARAMS_FILE, Potential  # noqa: F401
from nnpes.potential.build import build_potential, init_params, load_potential, make_module  # noqa: F401
