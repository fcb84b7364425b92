"""Model registry. A model registers once here and gets the config section, the physics test
battery and every front end (training, MD, active learning) for free.

Contract of a registered model's flax module (the "inner" model):

    module(vectors, species, senders, receivers, edge_mask, node_mask) -> (N,) per-atom energies

    vectors   (E, 3) Å, r_j - r_i + S·cell for edge (receiver i, sender j); zero on padding edges
    species   (N,) int32 index into ``ModelConfig.elements`` (0 on padding nodes)
    senders, receivers  (E,) int32, sorted by receiver
    edge_mask (E,) bool, node_mask (N,) bool: False on padding

It returns unscaled per-atom outputs E_i; ``nnpes.models.energy.EnergyModel`` adds the per-element
scale σ_Z, reference energies E0_Z and the global offset b. Padding must contribute exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MODELS: dict[str, "ModelSpec"] = {}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hparams: type  # dataclass of the model's hyperparameters (validated by nnpes.config.schema)
    build: Callable  # build(hparams, model_config) -> flax.linen.Module
    # Optional: calibrate(module, variables, padded_graphs) -> variables, run by build_potential when a
    # training set is given (e.g. descriptor normalisation). Non-trainable values live in a flax
    # collection other than "params" ("constants"); training differentiates variables["params"] only.
    calibrate: Callable | None = None


def register(name: str, hparams: type, calibrate: Callable | None = None):
    """Decorator: ``@register("nequip", NequIPHParams) def build(hp, cfg): ...``.

    Names starting with "_" are private (tests); the physics battery skips them."""

    def wrap(build):
        MODELS[name] = ModelSpec(name, hparams, build, calibrate)
        return build

    return wrap


def get_model(name: str) -> ModelSpec:
    import_builtin_models()
    if name not in MODELS:
        from nnpes.config.schema import closest

        close = closest(name, MODELS)
        hint = f"; did you mean {close!r}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint}; registered: {sorted(MODELS)}")
    return MODELS[name]


def import_builtin_models():
    # Importing the modules runs their @register decorators.
    from nnpes.models import behler_parrinello, mace, nequip  # noqa: F401
