"""The active-learning config (``nnpes active-learn``): sections ``model`` (as in a training config),
``data``, ``committee``, ``explore``, ``select``, ``oracle``, ``executor``, ``stop``. Temperatures in K,
times in fs, friction in 1/fs, trust levels in eV/Å (or 1 for ``max_rel_force_std``)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from nnpes.config.model import ModelConfig, parse_model_config
from nnpes.config.schema import ConfigError, deprecated_keys, from_dict
from nnpes.errors import reading


_FIT_RENAMES = {"epochs": "max_epochs", "learning_rate": "lr", "final_learning_rate_ratio": "min_lr_ratio"}


@deprecated_keys
@dataclass
class FitConfig:
    """Committee training hyperparameters, named as in the ``training:`` section: Adam with a
    cosine decay from ``lr`` to ``lr·min_lr_ratio`` over ``max_epochs``; loss weights w_E, w_F."""

    DEPRECATED_KEYS: ClassVar[dict] = _FIT_RENAMES

    max_epochs: int = 50
    batch_size: int = 4
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr·ratio over the fit
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    bootstrap: bool = True
    seed: int = 0


@dataclass
class ExploreConfig:
    """The ``explore:`` section. Temperatures in K, times in fs, friction in 1/fs."""

    temperatures: list[float] = field(default_factory=lambda: [300.0])
    steps: int = 1000  # per trajectory
    timestep: float = 0.5  # fs
    friction: float = 0.02  # 1/fs
    stride: int = 10  # record a frame every `stride` steps
    chunk: int = 50  # steps per jitted block (frames collected, overflow checked between blocks)
    skin: float = 1.0  # Å, the device Verlet list's skin (rebuilt on device when an atom moved skin/2)
    capacity_multiplier: float = 1.25  # head room of the Verlet list's buffers (overflow → reallocate, redo)
    measure: str = "max_force_std"  # or max_rel_force_std: the ε compared with the trust levels
    stop_above: float | None = None  # ε (eV/Å or 1) beyond which a trajectory stops; the loop sets select.hi
    metadynamics: dict | None = None  # {cvs: [...], sigma: [...], height, pace, bias_factor}
    uncertainty_bias: dict | None = None  # {strength: eV, width: eV}
    seed: int = 0

    def validate(self, path: str = "explore"):
        if self.measure not in ("max_force_std", "max_rel_force_std"):
            raise ConfigError(f"{path}.measure: expected max_force_std or max_rel_force_std, got {self.measure!r}")
        if self.steps < 1 or self.stride < 1 or self.chunk < 1:
            raise ConfigError(f"{path}: steps, stride and chunk must be ≥ 1")
        if not self.temperatures or min(self.temperatures) < 0:
            raise ConfigError(f"{path}.temperatures: give one or more temperatures ≥ 0 K")


@dataclass
class DataSection:
    initial: str | None = None  # labelled structures (any nnpes.data format); optional
    starts: str | None = None  # starting structures for exploration (ase-readable); default: initial
    max_starts: int = 4
    test: str | None = None  # labelled held-out set, reported every iteration
    valid_fraction: float = 0.1  # of all labels, chosen by a hash of the label key (stable on resume)
    # With no initial set (or to add to it): label `initial_per_start` rattled copies of each start.
    initial_per_start: int = 0
    initial_rattle: float = 0.05  # Å


@deprecated_keys
@dataclass
class CommitteeSection:
    """The ``committee:`` section: size, training (``FitConfig`` names) and calibration."""

    DEPRECATED_KEYS: ClassVar[dict] = {**_FIT_RENAMES, "warm_epochs": "warm_max_epochs"}

    size: int = 4
    max_epochs: int = 50  # first iteration
    warm_max_epochs: int | None = None  # later iterations when warm_start (default: max_epochs)
    batch_size: int = 4
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    bootstrap: bool = True
    warm_start: bool = True
    calibrate: bool = False  # fit std_scale on the validation labels each iteration
    nu: float = 1.0  # eV/Å, for max_rel_force_std

    def fit_config(self, warm: bool, seed: int) -> FitConfig:
        """The ``FitConfig`` of one iteration (``warm``: a warm start from the previous committee)."""
        epochs = (self.warm_max_epochs or self.max_epochs) if warm else self.max_epochs
        return FitConfig(epochs, self.batch_size, self.lr, self.min_lr_ratio, self.energy_weight,
                         self.forces_weight, self.bootstrap, seed)


@dataclass
class SelectSection:
    lo: float = 0.05  # eV/Å (or 1 for max_rel_force_std): below is accurate
    hi: float = 0.5  # at or above is failed; exploration stops a trajectory here
    max_per_iteration: int = 20
    method: str = "fps"  # fps | cv_bins | top | random
    n_bins: int = 10
    # With no candidate at all but failed frames (a model so poor that every trajectory stops at
    # once), label the failed frames with the lowest ε instead of repeating the same iteration.
    fallback_to_failed: bool = True

    def validate(self, path="select"):
        if not self.lo < self.hi:
            raise ConfigError(f"{path}: trust levels need lo < hi, got lo={self.lo}, hi={self.hi}")
        if self.method not in ("fps", "cv_bins", "top", "random"):
            raise ConfigError(f"{path}.method: {self.method!r} is not one of fps, cv_bins, top, random")


@dataclass
class ExecutorSection:
    kind: str = "process"  # serial | thread | process | dask
    workers: int | None = None
    address: str | None = None  # dask scheduler


@dataclass
class StopSection:
    max_iterations: int = 10
    accurate_fraction: float = 0.95  # stop when this fraction of explored frames is accurate
    max_oracle_calls: int | None = None  # the oracle budget, including initial labels


@dataclass
class ActiveConfig:
    model: ModelConfig | None = None  # the model section, as in a training config
    data: DataSection = field(default_factory=DataSection)
    committee: CommitteeSection = field(default_factory=CommitteeSection)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    select: SelectSection = field(default_factory=SelectSection)
    oracle: dict = field(default_factory=lambda: {"type": "tblite", "method": "GFN2-xTB"})
    executor: ExecutorSection = field(default_factory=ExecutorSection)
    stop: StopSection = field(default_factory=StopSection)
    seed: int = 0

    def to_dict(self) -> dict:
        """The config as YAML-ready data (the model section written inline, as it is read)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        return {"model": self.model.to_dict(), **{k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                                                   for k, v in data.items()}}


def load_config(config) -> ActiveConfig:
    """dict or YAML path → validated ActiveConfig (unknown keys name themselves)."""
    if isinstance(config, ActiveConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} not found")
        with reading(f"active-learning config {path}"):
            config = yaml.safe_load(path.read_text()) or {}
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (model, oracle, data, ...)")
    config = dict(config)
    if not config.get("model"):
        raise ConfigError("model: the active-learning config needs a model section")
    config["model"] = parse_model_config(config["model"], "model")
    cfg = from_dict(ActiveConfig, config, "")
    if cfg.data.initial is None and cfg.data.initial_per_start == 0:
        raise ConfigError("data: give data.initial (labelled structures) or data.initial_per_start > 0")
    if cfg.select.method == "cv_bins" and not cfg.explore.metadynamics:
        raise ConfigError("select.method: cv_bins bins the metadynamics collective variables; add explore.metadynamics or use fps")
    if cfg.data.initial is None and cfg.data.starts is None:
        raise ConfigError("data: give data.starts (or data.initial) for exploration to start from")
    return cfg
