"""The model card saved beside every potential (``card.yaml``): what the model is, which versions
made it and when, its units and, for a model saved by ``nnpes train``, the data it was trained on
(paths, sha256, frames per split) and its test errors; for a fine-tuned model, its parent's card
(``parent``), so the whole lineage travels with the model. ``nnpes info MODEL`` prints it.

Potentials saved before cards existed have none (``Potential.card`` is None) and load as before;
keys a newer nnpes adds to a card are ignored by this one.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

import yaml

from nnpes.files import atomic_write, sha256_file, yaml_safe

CARD_FILE = "card.yaml"
CARD_VERSION = 1
CARD_PACKAGES = ("nnpes", "jax", "jaxlib", "flax", "e3nn-jax")
UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å³", "lengths": "Å"}


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed version of each distribution, or ``"not installed"``."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def count_parameters(variables) -> int:
    """Scalars in the trained part of flax variables (``variables["params"]``)."""
    import jax
    import numpy as np

    trained = variables.get("params", variables) if isinstance(variables, dict) else variables
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(trained)))


def _known(cls, data) -> dict:
    """The keys of mapping ``data`` that are fields of dataclass ``cls`` (newer keys are ignored)."""
    if not isinstance(data, dict):
        raise ValueError(f"model card: expected a mapping for {cls.__name__}, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class ModelSummary:
    name: str
    elements: list[str]
    cutoff: float  # Å
    dtype: str
    n_parameters: int  # trained parameters (variables["params"])


@dataclass
class DataFile:
    role: str  # train, valid, test, train_indices, valid_indices or test_indices
    path: str
    sha256: str

    @classmethod
    def of(cls, role: str, path) -> "DataFile":
        return cls(role, str(path), sha256_file(path))


@dataclass
class TrainingData:
    files: list[DataFile]
    frames: dict[str, int]  # structures per split: train, valid, test
    energy_unit: str = "eV"  # of the files (converted to eV when read)
    # Å, shortest distance of each element pair ("C-H") in the train split (within the cutoff);
    # predict warns below it (nnpes.graph.distances). None: cards written before it was recorded.
    shortest_distances: dict[str, float] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingData":
        d = _known(cls, d)
        files = [DataFile(**_known(DataFile, f)) for f in d.pop("files", None) or []]
        shortest = d.pop("shortest_distances", None)
        shortest = None if shortest is None else {str(k): float(v) for k, v in shortest.items()}
        return cls(files=files, frames={str(k): int(v) for k, v in (d.pop("frames", None) or {}).items()},
                   shortest_distances=shortest, **d)


@dataclass
class Parent:
    """The saved potential a fine-tune started from (``model.init_from``)."""

    path: str  # as the config gave it
    card: "ModelCard | None" = None  # its card; None: saved before cards

    @classmethod
    def from_dict(cls, d: dict) -> "Parent":
        d = _known(cls, d)
        card = d.pop("card", None)
        return cls(card=None if card is None else ModelCard.from_dict(card), **d)


@dataclass
class ModelCard:
    model: ModelSummary
    created: str  # UTC, ISO 8601
    versions: dict[str, str]  # CARD_PACKAGES
    units: dict[str, str] = field(default_factory=lambda: dict(UNITS))
    data: TrainingData | None = None  # set by the trainer
    test_split: str | None = None  # "test", or "valid" for a run without a test set
    test_metrics: dict | None = None  # nnpes.training.evaluate's dict: MAE/RMSE in meV
    card_version: int = CARD_VERSION
    parent: Parent | None = None  # set by the trainer for a fine-tune (model.init_from)

    def lineage(self) -> list["ModelCard"]:
        """This card, then its parent's, and so on back to the model trained from scratch (or the
        first ancestor saved without a card)."""
        cards = [self]
        while cards[-1].parent is not None and cards[-1].parent.card is not None:
            cards.append(cards[-1].parent.card)
        return cards

    def shortest_distances(self) -> dict[str, float] | None:
        """Å per element pair: the shortest in the training data of this model and of every model
        it was fine-tuned from (its weights learned them all); None if none was recorded."""
        from nnpes.graph.distances import merge_shortest

        return merge_shortest([c.data.shortest_distances for c in self.lineage() if c.data is not None])

    @classmethod
    def of(cls, potential, data: TrainingData | None = None, parent: Parent | None = None) -> "ModelCard":
        """A new card for ``potential``, dated now, with the installed versions."""
        c = potential.config
        model = ModelSummary(c.name, list(c.elements), float(c.cutoff), c.dtype, potential.n_parameters)
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(model=model, created=created, versions=package_versions(CARD_PACKAGES), data=data,
                   parent=parent)

    def to_dict(self) -> dict:
        return yaml_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        d = _known(cls, d)
        try:
            model = ModelSummary(**_known(ModelSummary, d.pop("model")))
            data, parent = d.pop("data", None), d.pop("parent", None)
            return cls(model=model, data=None if data is None else TrainingData.from_dict(data),
                       parent=None if parent is None else Parent.from_dict(parent), **d)
        except (KeyError, TypeError) as e:
            raise ValueError(f"model card: missing or malformed entry ({e})") from None

    def save(self, directory) -> Path:
        """Write ``directory/card.yaml`` atomically."""
        path = Path(directory) / CARD_FILE
        atomic_write(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True).encode())
        return path

    @classmethod
    def load(cls, directory) -> "ModelCard | None":
        """The card of a saved potential's directory; None if it has none (saved before cards)."""
        path = Path(directory) / CARD_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(yaml.safe_load(path.read_text()))
        except (ValueError, yaml.YAMLError) as e:
            raise ValueError(f"{str(path)!r}: {e}") from None
