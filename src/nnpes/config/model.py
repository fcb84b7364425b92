"""The ``model:`` section of a config: common keys plus the chosen model's hyperparameters inline."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ase.data import atomic_numbers

from nnpes.config.schema import ConfigError, closest, from_dict


@dataclass
class ModelConfig:
    name: str = "nequip"
    elements: list[str] = field(default_factory=list)  # chemical symbols, e.g. [H, C, O]
    cutoff: float = 5.0  # Å
    dtype: Literal["float32", "float64"] = "float32"
    # None: taken from the training set's statistics (nnpes.graph.stats), else these defaults:
    avg_num_neighbors: float | None = None  # default 1.0 without data
    e0: dict[str, float] | None = None  # eV per element; default 0
    scale: float | None = None  # eV, σ_Z initial value for every element; default 1.0
    # A saved potential (or a run directory holding model/) to start from: its weights and its
    # normalisation (e0, scale, avg_num_neighbors, descriptor statistics) are kept, and so are its
    # zbl switching radii where pair_repulsion_outer is None; dtype may differ.
    init_from: str | None = None
    # A fixed, untrained short-range pair term added to the energy (nnpes.models.repulsion):
    # "zbl" = ZBL screened nuclear repulsion, switched off between 0.5 and 0.8 × (R_cov,i + R_cov,j).
    pair_repulsion: Literal["none", "zbl"] = "none"
    # Å per element pair ("H-C", in elements' order): where the term reaches zero. None: from the
    # training data (the farther of 0.8 × (R_cov,i + R_cov,j) and 0.9 × the pair's shortest
    # distance there), or the covalent value without data. Written into the saved model.
    pair_repulsion_outer: dict[str, float] | None = None
    hparams: Any = None  # the registered model's hyperparameter dataclass

    def validate(self, path: str = "model"):
        if not self.elements:
            raise ConfigError(f"{path}.elements: list the chemical symbols the model knows, e.g. [H, C, O]")
        for s in self.elements:
            if s not in atomic_numbers or s == "X":
                close = closest(s, atomic_numbers)
                hint = f" (did you mean {close!r}?)" if close else ""
                raise ConfigError(f"{path}.elements: unknown element {s!r}{hint}")
        if len(set(self.elements)) != len(self.elements):
            raise ConfigError(f"{path}.elements: repeated element in {self.elements}")
        if not 0 < self.cutoff < math.inf:
            raise ConfigError(f"{path}.cutoff must be a finite number > 0 (Å), got {self.cutoff}")
        if self.e0 is not None:
            unknown = set(self.e0) - set(self.elements)
            if unknown:
                raise ConfigError(f"{path}.e0: elements {sorted(unknown)} are not in model.elements")
        if self.pair_repulsion == "zbl":
            self._check_repulsion_range(path)
        elif self.pair_repulsion_outer is not None:
            raise ConfigError(f"{path}.pair_repulsion_outer is set but pair_repulsion is {self.pair_repulsion!r}: "
                              "set pair_repulsion: zbl or remove it")

    def _check_repulsion_range(self, path: str) -> None:
        # The term must be zero at the cutoff: pairs beyond it are not in the neighbour list.
        import numpy as np

        from nnpes.models.repulsion import pair_keys, switching_radii

        if self.pair_repulsion_outer is not None:
            names = [key for _, _, key in pair_keys(self.numbers)]
            for key, value in self.pair_repulsion_outer.items():
                if key not in names:
                    flipped = "-".join(reversed(str(key).split("-")))
                    close = flipped if flipped in names else closest(str(key), names)
                    hint = f" (did you mean {close!r}?)" if close else f"; pairs: {names}"
                    raise ConfigError(f"{path}.pair_repulsion_outer: unknown pair {key!r}{hint}")
                if not isinstance(value, (int, float)) or not value > 0:
                    raise ConfigError(f"{path}.pair_repulsion_outer.{key} must be a distance > 0 (Å), got {value!r}")
        r_in, r_out = switching_radii(self.numbers, self.pair_repulsion_outer)
        bad = np.argwhere(r_out <= r_in)
        if len(bad):
            i, j = bad[0]
            raise ConfigError(f"{path}.pair_repulsion_outer: {self.elements[i]}-{self.elements[j]} r_out {r_out[i, j]:.3f} Å "
                              f"must be beyond r_in {r_in[i, j]:.3f} Å (0.5 × the covalent radii)")
        i, j = np.unravel_index(np.argmax(r_out), r_out.shape)
        if r_out[i, j] > self.cutoff:
            raise ConfigError(f"{path}.pair_repulsion: zbl reaches {r_out[i, j]:.2f} Å for "
                              f"{self.elements[i]}–{self.elements[j]}, beyond the cutoff {self.cutoff} Å; raise model.cutoff")

    @property
    def numbers(self) -> list[int]:
        return [atomic_numbers[s] for s in self.elements]

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "hparams"}
        # Saved models stay readable by versions without these keys.
        if d["init_from"] is None:
            del d["init_from"]
        if d["pair_repulsion"] == "none":
            del d["pair_repulsion"]
        if d["pair_repulsion_outer"] is None:
            del d["pair_repulsion_outer"]
        d.update(dataclasses.asdict(self.hparams))
        return d


def parse_model_config(data: dict | ModelConfig, path: str = "model") -> ModelConfig:
    """Common keys are ModelConfig's; every other key must be a hyperparameter of model ``name``."""
    if isinstance(data, ModelConfig):
        return data
    from nnpes.models import get_model

    data = dict(data or {})
    if "hparams" in data:
        raise ConfigError(f"{path}.hparams: write the hyperparameters inline in the model section")
    common_names = {f.name for f in dataclasses.fields(ModelConfig)} - {"hparams"}
    common = {k: v for k, v in data.items() if k in common_names}
    rest = {k: v for k, v in data.items() if k not in common_names}
    name = common.get("name", ModelConfig.name)
    try:
        spec = get_model(name)
    except KeyError as e:
        raise ConfigError(f"{path}.name: {e.args[0]}") from None
    hp_names = {f.name for f in dataclasses.fields(spec.hparams)}
    for key in rest:
        if key not in hp_names:
            close = closest(key, sorted(hp_names | common_names), cutoff=0.5)
            hint = f"; did you mean {close!r}?" if close else ""
            raise ConfigError(f"unknown key {path}.{key!r} for model {name!r}{hint}")
    hparams = from_dict(spec.hparams, rest, path)
    cfg = from_dict(ModelConfig, common, path)
    cfg.hparams = hparams
    return cfg
