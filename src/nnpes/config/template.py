"""``nnpes config template``: a commented YAML config holding every key with its default."""

from __future__ import annotations

import dataclasses

import yaml

from nnpes.config.model import ModelConfig
from nnpes.config.training import DataConfig, OutputConfig, TrainingConfig



def _yaml_value(v) -> str:
    if v is None:
        return "null"
    return yaml.safe_dump(v, default_flow_style=True, allow_unicode=True).strip().removesuffix("...").strip()


# Comments for the common model keys (ModelConfig lives in nnpes.config.model).
MODEL_DOCS = {
    "name": "registered model",
    "elements": "chemical symbols the model knows",
    "cutoff": "Å",
    "dtype": "float32 or float64",
    "avg_num_neighbors": "null: from the training set",
    "e0": "eV per element; null: least squares on the training set",
    "scale": "eV; null: force RMS of the training set",
    "init_from": "fine-tune: saved model or run dir; keeps its weights, normalisation and zbl radii",
    "pair_repulsion": "none or zbl: fixed ZBL nuclear repulsion, zero beyond 0.8·(R_cov,i + R_cov,j)",
    "pair_repulsion_outer": "Å per pair (H-C: 1.0) where zbl reaches zero; null: farther of 0.8·(R_i + R_j) and 0.9 × the data's shortest",
}


def _section_lines(cls, values: dict | None = None, skip=(), docs=None) -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        if values is not None and f.name in values:
            v = values[f.name]
        elif f.default is not dataclasses.MISSING:
            v = f.default
        elif f.default_factory is not dataclasses.MISSING:
            v = f.default_factory()
        else:
            v = None
        if dataclasses.is_dataclass(v):
            v = dataclasses.asdict(v)
        doc = f.metadata.get("doc", "") or (docs or {}).get(f.name, "")
        line = f"  {f.name}: {_yaml_value(v)}"
        lines.append(f"{line:<40} # {doc}" if doc else line)
    return lines


def template(model: str = "nequip", elements=("H", "C", "O")) -> str:
    """A commented YAML config holding every key with its default."""
    from nnpes.models import get_model

    spec = get_model(model)
    hp = spec.hparams()
    out = [
        "# nnpes training config. Relative data paths are resolved against this file's directory.",
        "# Override any key on the command line: nnpes train CONFIG --set training.lr=1e-3",
        "data:",
        *_section_lines(DataConfig, {"train": "train.xyz"}),
        f"model:                                   # {model}; common keys, then its hyperparameters inline",
        *_section_lines(ModelConfig, {"name": model, "elements": list(elements)}, skip=("hparams",), docs=MODEL_DOCS),
        *_section_lines(type(hp), dataclasses.asdict(hp)),
        "training:",
        *_section_lines(TrainingConfig),
        "output:",
        *_section_lines(OutputConfig),
    ]
    return "\n".join(out) + "\n"
