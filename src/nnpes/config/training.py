"""The top-level training config: sections ``data``, ``model``, ``training``, ``output``.

One YAML file plus ``--set section.key=value`` overrides. Loading is strict (``nnpes.config.schema``):
an unknown or mistyped key fails at load with the key's dotted path and the closest valid key.

Relative data paths are resolved against the directory of the config file (like ``#include`` or
docker-compose), so a config works from any working directory; a dict config resolves them
against the current directory. The shipped configs in the repository's ``configs/`` name their
data relative to themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from nnpes.config.model import ModelConfig, parse_model_config
from nnpes.config.schema import ConfigError, closest, doc, from_dict
from nnpes.errors import reading, reason


@dataclass
class DataConfig:
    train: str | list[str] = doc("file(s) with labelled structures (extxyz, .npz rMD17, .json mlearn, .db)", default="")
    valid: str | None = doc("separate validation file; else split off the train file(s)", default=None)
    test: str | None = doc("separate test file; else split off the train file(s) when n_test is set", default=None)
    energy_unit: str = doc("unit of energies in the files, e.g. eV, kcal/mol (forces: unit/Å)", default="eV")
    index: str = doc("ase-style frame selection applied to each file, e.g. ':' or ':1000'", default=":")
    format: str | None = doc("ase.io format name when the extension is not enough", default=None)
    n_train: int | float | None = doc("train count (int) or fraction (float); None: what remains", default=None)
    n_valid: int | float = doc("validation count or fraction of the train file(s) (ignored if `valid` is set)", default=0.1)
    n_test: int | float | None = doc("test count or fraction split off when `test` is not given", default=None)
    split_seed: int = doc("seed of the random split", default=0)
    train_indices: str | None = doc("index file (one integer per line) choosing the train frames; overrides the split", default=None)
    valid_indices: str | None = doc("index file for the validation frames", default=None)
    test_indices: str | None = doc("index file for the test frames", default=None)
    energy_key: str | None = doc("extxyz info key holding the energies, e.g. REF_energy (default: the calculator's energy, or info 'energy')", default=None)
    forces_key: str | None = doc("extxyz array key holding the forces, e.g. REF_forces (default: the calculator's forces, or array 'forces')", default=None)
    stress_key: str | None = doc("extxyz info key holding the stress, e.g. REF_stress (default: the calculator's stress, or info 'stress')", default=None)
    bootstrap_seed: int | None = doc("resample the train split with replacement (as many draws as frames) by this seed; valid and test untouched, normalisation from the whole train split (committee_mode: bootstrap sets it per member)", default=None)

    def validate(self, path="data"):
        if not self.train:
            raise ConfigError(f"{path}.train: give the training data file(s)")
        from nnpes.data.readers import ENERGY_UNITS

        if self.energy_unit not in ENERGY_UNITS:
            close = closest(self.energy_unit, ENERGY_UNITS)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(f"{path}.energy_unit: {self.energy_unit!r} is not one of {list(ENERGY_UNITS)}{hint}")
        for name in ("n_train", "n_valid", "n_test"):
            v = getattr(self, name)
            if isinstance(v, float) and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{path}.{name}: a float is a fraction in [0, 1], got {v}")
            if isinstance(v, int) and v < 0:
                raise ConfigError(f"{path}.{name}: must be >= 0, got {v}")

    @property
    def train_files(self) -> list[str]:
        return [self.train] if isinstance(self.train, str) else list(self.train)


@dataclass
class WeightStage:
    """A late training stage (e.g. MACE's stage two: raise w_E, lower the learning rate)."""

    epoch: int = doc("from this epoch (0-based) on, use these loss weights", default=0)
    energy_weight: float | None = doc("w_E from this epoch on (null: unchanged)", default=None)
    forces_weight: float | None = doc("w_F from this epoch on (null: unchanged)", default=None)
    stress_weight: float | None = doc("w_S from this epoch on (null: unchanged)", default=None)
    lr_factor: float | None = doc("multiply the learning rate by this from this epoch on (null: 1)", default=None)

    def validate(self, path="weight_schedule"):
        if self.lr_factor is not None and not self.lr_factor > 0:
            raise ConfigError(f"{path}.lr_factor must be > 0, got {self.lr_factor}")


@dataclass
class TrainingConfig:
    seed: int = doc("seed of parameter init and data order", default=0)
    max_epochs: int = doc("stop after this many epochs", default=100)
    max_time: float | None = doc("stop after this many seconds of training (wall clock, summed over resumes)", default=None)
    batch_size: int = doc("structures per batch", default=5)
    valid_batch_size: int | None = doc("structures per validation batch (default: batch_size)", default=None)
    max_nodes: int | None = doc("cap on atoms per batch (None: from batch_size)", default=None)
    max_edges: int | None = doc("cap on edges per batch", default=None)
    # loss
    loss: Literal["mse", "huber"] = doc("squared error or Huber per component", default="mse")
    huber_delta: float = doc("Huber transition (in the loss term's units)", default=0.01)
    energy_weight: float = doc("w_E × L_E, L_E = mean ρ(ΔE/N) in (eV/atom)² (ρ = x² or 2·Huber; ΔE² in eV² without energy_per_atom)", default=1.0)
    forces_weight: float = doc("w_F × L_F, L_F = mean ρ over force components in (eV/Å)²", default=100.0)
    stress_weight: float = doc("w_S × L_S, L_S = mean ρ over the 9 stress components in (eV/Å³)²: a 1 meV/Å³ (0.16 GPa) error gives 1e-6, a 10 meV/Å force error L_F = 1e-4; only where stress labels exist", default=0.0)
    energy_per_atom: bool = doc("energy term uses (ΔE/N)², else ΔE²", default=True)
    weight_schedule: list[WeightStage] = doc("later stages change loss weights and lr, e.g. raise w_E and lower lr late", default_factory=list)
    # optimiser
    optimizer: Literal["adam", "adamw", "amsgrad"] = doc("optax optimiser", default="adam")
    lr: float = doc("peak learning rate", default=5e-3)
    beta1: float = doc("Adam decay rate of the gradient mean", default=0.9)
    beta2: float = doc("Adam decay rate of the squared-gradient mean", default=0.999)
    eps: float = doc("Adam epsilon (added to the root of the squared-gradient mean)", default=1e-8)
    weight_decay: float = doc("decoupled weight decay (adamw) on weight matrices only", default=0.0)
    clip_norm: float | None = doc("clip the global gradient norm (None: off)", default=10.0)
    freeze: list[str] = doc("parameters not trained (fine-tuning): module names or fnmatch patterns of their paths, "
                            "e.g. [embedding, layer_0] or ['layer_*/RadialMLP_0']; a pattern matching nothing is an error",
                            default_factory=list)
    schedule: Literal["constant", "cosine", "exponential", "plateau"] = doc("after warm-up", default="plateau")
    warmup_epochs: float = doc("linear warm-up from 0 over this many epochs", default=0.0)
    min_lr: float = doc("floor of cosine / plateau decay", default=1e-6)
    decay_rate: float = doc("exponential: lr multiplied by this per epoch", default=0.98)
    plateau_patience: int = doc("plateau: epochs without validation improvement before lr *= plateau_factor", default=10)
    plateau_factor: float = doc("plateau: factor on lr after plateau_patience epochs without improvement", default=0.5)
    ema_decay: float | None = doc("EMA of parameters used for validation and saved (None: off)", default=0.99)
    early_stopping_patience: int | None = doc("stop after this many epochs without validation improvement", default=None)
    progress: bool | None = doc("tqdm progress bar (None: only on a terminal)", default=None)
    # devices (nnpes.training.parallel)
    devices: int | Literal["all"] = doc("data-parallel devices: 1 = plain single-device step; N or 'all' = batch split over a mesh", default=1)
    matmul_precision: Literal["default", "high", "highest"] = doc("jax.default_matmul_precision of the steps; 'highest' = full float32 on GPUs (default there: TF32)", default="default")
    # committee (nnpes.training.committee)
    committee: int = doc("K >= 2: train K members into RUN/members/k (seed + k), then a calibrated committee in RUN/committee; 1: one model", default=1)
    committee_mode: Literal["seeds", "bootstrap"] = doc("how members differ: seeds (init and data order) or bootstrap (also a resampled train split each)", default="seeds")

    def validate(self, path="training"):
        if self.batch_size < 1:
            raise ConfigError(f"{path}.batch_size must be >= 1, got {self.batch_size}")
        if self.committee < 1:
            raise ConfigError(f"{path}.committee must be >= 1 (2 or more for a committee), got {self.committee}")
        if self.devices != "all" and self.devices < 1:
            raise ConfigError(f"{path}.devices must be >= 1 or 'all', got {self.devices}")
        if self.max_epochs < 0:
            raise ConfigError(f"{path}.max_epochs must be >= 0")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"{path}.lr must be a finite number > 0, got {self.lr}")
        if self.weight_decay and self.optimizer != "adamw":
            raise ConfigError(f"{path}.weight_decay: set optimizer: adamw for (decoupled) weight decay")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{path}.ema_decay must be in [0, 1), got {self.ema_decay}")
        epochs = [s.epoch for s in self.weight_schedule]
        if epochs != sorted(epochs):
            raise ConfigError(f"{path}.weight_schedule: stages must be in increasing epoch order")

    # weight_schedule: the value of a key at an epoch is the one set by the last stage begun by then
    def _scheduled(self, epoch: int, key: str, before):
        for stage in self.weight_schedule:
            if epoch >= stage.epoch and getattr(stage, key) is not None:
                before = getattr(stage, key)
        return before

    def loss_weights(self, epoch: int) -> dict[str, float]:
        """w_E, w_F, w_S in force at ``epoch``."""
        return {k: self._scheduled(epoch, f"{k}_weight", getattr(self, f"{k}_weight"))
                for k in ("energy", "forces", "stress")}

    def lr_factor(self, epoch: int) -> float:
        """The factor on the learning rate in force at ``epoch`` (1 before any stage sets one)."""
        return self._scheduled(epoch, "lr_factor", 1.0)

    def stage_begins(self, epoch: int) -> bool:
        """Whether a later ``weight_schedule`` stage begins at ``epoch`` (one at epoch 0 is the start)."""
        return epoch > 0 and any(stage.epoch == epoch for stage in self.weight_schedule)


@dataclass
class OutputConfig:
    run_dir: str = doc("where checkpoints, metrics.csv, plots and the model go (relative: to the cwd)", default="runs/run")
    plots: bool = doc("parity plots and learning curve at the end", default=True)
    tensorboard: bool = doc("every metrics.csv column per epoch as TensorBoard scalars in RUN/tensorboard (pip install 'nnpes[tensorboard]')", default=False)
    wandb: bool | dict[str, Any] = doc("Weights & Biases: true, or wandb.init arguments, e.g. {project: cu, entity: me, mode: offline}; needs wandb installed", default=False)

    def validate(self, path="output"):
        for key, module, install in (("tensorboard", "tensorboardX", "pip install 'nnpes[tensorboard]' (tensorboardX)"),
                                     ("wandb", "wandb", "pip install wandb")):
            if getattr(self, key):
                try:
                    importlib.import_module(module)
                except ImportError:
                    raise ConfigError(f"{path}.{key} is switched on but {module} is not installed: {install}, "
                                      f"or set {path}.{key}: false") from None


@dataclass
class Config:
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    output: OutputConfig
    source: str | None = None  # the file the config came from
    raw: dict = dataclasses.field(default_factory=dict)  # the dict after overrides

    def to_dict(self) -> dict:
        return copy.deepcopy(self.raw)


SECTIONS = ("data", "model", "training", "output")


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """``["training.lr=1e-3", "model.elements=[H, O]"]``: values are parsed as YAML."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2:
            raise ConfigError(f"override {item!r}: name the section, e.g. training.{parts[0]}=...")
        if parts[0] not in SECTIONS:
            close = closest(parts[0], SECTIONS)
            hint = f"; did you mean {close!r}?" if close else ""
            raise ConfigError(f"override {item!r}: unknown section {parts[0]!r}{hint}")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(value, item)
    return data


def _parse_value(text: str, item: str = ""):
    """YAML, except that "1e-3" (a string to YAML 1.1) is the number it looks like."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError as e:
        key = item.split("=", 1)[0]
        raise ConfigError(f"override {item!r}: the value {text!r} is {reason(e)}; "
                          f"quote it, e.g. --set '{key}=\"{text}\"'") from None
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            pass
    return v


def _resolve(path: str | None, base: Path) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> Config:
    """Parse a YAML file or dict (plus overrides) into a checked ``Config``. Data paths come back
    absolute. Existence of data files is checked by ``check_config`` (and training)."""
    if isinstance(source, dict):
        data, base, src = copy.deepcopy(source), Path.cwd(), None
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} not found")
        with reading(f"config file {path}"):
            data = yaml.safe_load(path.read_text()) or {}
        base, src = path.resolve().parent, str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{src or 'config'}: expected a mapping with sections {list(SECTIONS)}")
    data = apply_overrides(data, overrides)
    for key in data:
        if key not in SECTIONS:
            close = closest(key, SECTIONS, cutoff=0.5)
            hint = f"; did you mean {close!r}?" if close else f"; valid sections: {list(SECTIONS)}"
            raise ConfigError(f"unknown section {key!r}{hint}")
    if "data" not in data:
        raise ConfigError("missing section 'data' (at least data.train)")
    if "model" not in data:
        raise ConfigError("missing section 'model' (at least model.name and model.elements)")
    try:
        dcfg = from_dict(DataConfig, data.get("data"), "data")
        mcfg = parse_model_config(data.get("model") or {}, "model")
        tcfg = from_dict(TrainingConfig, data.get("training"), "training")
        ocfg = from_dict(OutputConfig, data.get("output"), "output")
    except ConfigError as e:
        raise ConfigError(f"{src}: {e}" if src else str(e)) from None
    dcfg.train = [_resolve(p, base) for p in dcfg.train_files]
    if len(dcfg.train) == 1:
        dcfg.train = dcfg.train[0]
    for name in ("valid", "test", "train_indices", "valid_indices", "test_indices"):
        setattr(dcfg, name, _resolve(getattr(dcfg, name), base))
    mcfg.init_from = _resolve(mcfg.init_from, base)
    raw = copy.deepcopy(data)
    raw["data"] = {**raw["data"], **{k: getattr(dcfg, k) for k in ("train", "valid", "test", "train_indices", "valid_indices", "test_indices") if getattr(dcfg, k) is not None}}
    if mcfg.init_from is not None:
        raw["model"] = {**raw["model"], "init_from": mcfg.init_from}
    return Config(data=dcfg, model=mcfg, training=tcfg, output=ocfg, source=src, raw=raw)


def check_config(source, overrides=None) -> Config:
    """``load_config`` plus checks that need the file system: every data/index file exists."""
    cfg = load_config(source, overrides)
    d = cfg.data
    for name, p in [("train", f) for f in d.train_files] + [
        (n, getattr(d, n)) for n in ("valid", "test", "train_indices", "valid_indices", "test_indices")
    ]:
        if p is not None and not Path(p).exists():
            where = f"{cfg.source}: " if cfg.source else ""
            raise FileNotFoundError(f"{where}data.{name}: file {p!r} not found")
    return cfg
