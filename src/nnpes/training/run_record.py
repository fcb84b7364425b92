"""What a run was started with, so ``--resume`` continues that run and nothing else.

``run.yaml`` in the run directory holds the resolved config (every key, defaults included) and
the sha256 of every data file. ``--resume`` compares the new config and data with it before
touching the directory and refuses when they differ: resuming with a changed split, model or
normalisation data would silently combine old weights with new statistics (issue 12: a model
250 meV/atom off). A changed run is a new run started from the old weights: fine-tuning
(``--init-from``).

A few keys may change between resumes because they only say how long or how verbosely to go on,
or how (not what) the model computes, and ``training.weight_schedule`` may change in the epochs
the run has not begun: the stages already in force stay as they were, so the resumed run ends
where an uninterrupted run with the new schedule would (a late stage two added, moved or dropped
while a long run is still before it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from nnpes.config import Config
from nnpes.errors import UserError, reading
from nnpes.files import atomic_write_text, yaml_safe
from nnpes.potential.card import DataFile

RECORD = "run.yaml"

# Keys a resumed run may change: how long to go on and what to print, not what is learned; and
# how the model is computed, not what it computes (NequIP's edge blocks: the same function and
# parameters, tested equal to 1e-12), so a run started before such a default changed resumes.
RESUMABLE = frozenset({
    "training.max_epochs", "training.max_time", "training.progress", "training.early_stopping_patience",
    "output.run_dir", "output.plots", "output.tensorboard", "output.wandb",
    "model.edge_chunk", "model.block_above", "model.radial_per_pair",
})
# Keys a resumed run may change for the epochs it has not begun (``unchanged_before``).
FUTURE_ONLY = frozenset({"training.weight_schedule"})
DATA_FILES = ("train", "valid", "test", "train_indices", "valid_indices", "test_indices")
# Keys added after runs were recorded: a record without one was made with its default.
ADDED_KEYS = {"data.energy_key": None, "data.forces_key": None, "data.stress_key": None}


class ResumeError(ValueError):
    """``--resume`` asked to continue a run with other config or data, or where there is no run."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and prefix.count(".") < 1:  # sections, not dict-valued keys
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def data_files(dcfg) -> list[DataFile]:
    """Every data file a run reads (train files, then valid, test and index files), with its
    sha256; a missing file is left out (``load_splits`` reports it)."""
    roles = [("train", p) for p in dcfg.train_files] + [(r, getattr(dcfg, r)) for r in DATA_FILES[1:]]
    return [DataFile.of(role, p) for role, p in roles if p and Path(p).is_file()]


@dataclass
class RunRecord:
    """The resolved config (dotted keys → values) and the data files read (``DataFile``s)."""

    config: dict = field(default_factory=dict)
    files: list[DataFile] = field(default_factory=list)

    @classmethod
    def of(cls, cfg: Config) -> "RunRecord":
        sections = {name: dataclasses.asdict(getattr(cfg, name)) for name in ("data", "training", "output")}
        sections["model"] = cfg.model.to_dict()  # hyperparameters as model.<key>
        config = {k: v for k, v in _flat(yaml_safe(sections)).items()
                  if not (k.startswith("data.") and k.split(".", 1)[1] in DATA_FILES)}  # files: by contents
        return cls(config=config, files=data_files(cfg.data))

    def save(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / RECORD, yaml.safe_dump(yaml_safe(dataclasses.asdict(self)), sort_keys=False,
                                                           allow_unicode=True))

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord | None":
        path = run_dir / RECORD
        if not path.exists():
            return None
        with reading(f"run record {path}"):
            raw = yaml.safe_load(path.read_text()) or {}
        try:
            return cls(config=dict(raw.get("config", {})), files=[DataFile(**f) for f in raw.get("files", [])])
        except (AttributeError, TypeError, ValueError) as e:  # not the mapping that save() writes
            raise UserError(f"{path} is damaged ({type(e).__name__}: {e}); it records the run that --resume "
                            "continues: restore it, or start a new run in another --run-dir") from None

    def differences(self, new: "RunRecord", begun: Callable[[], int] | None = None) -> list[str]:
        """What ``new`` changes that a resumed run may not (one readable item each). ``begun()``:
        epochs the run has begun (done, plus one partly done), called only when a ``FUTURE_ONLY``
        key changed (it reads the checkpoint); those keys may change from there on (None: not at all)."""
        out = []
        for key in sorted(set(self.config) | set(new.config)):
            if key in RESUMABLE:
                continue
            old_v, new_v = (c.get(key, ADDED_KEYS.get(key, "(unset)")) for c in (self.config, new.config))
            if old_v == new_v:
                continue
            if key in FUTURE_ONLY and begun is not None:
                n = begun()
                if unchanged_before(old_v, new_v, n):
                    continue
                out.append(f"{key}: the stages of epochs 0–{n - 1}, which the run has begun, changed "
                           "(later stages may change)")
            else:
                out.append(f"{key}: {old_v!r} → {new_v!r}")
        for role in DATA_FILES:
            old_f = [f for f in self.files if f.role == role]
            new_f = [f for f in new.files if f.role == role]
            if [f.sha256 for f in old_f] != [f.sha256 for f in new_f]:
                names = lambda fs: ", ".join(f"{Path(f.path).name} ({f.sha256[:12]})" for f in fs) or "none"  # noqa: E731
                out.append(f"data.{role}: other contents ({names(old_f)} → {names(new_f)})")
        return out


def unchanged_before(old_stages, new_stages, begun: int) -> bool:
    """Whether two ``weight_schedule`` lists (of stage dicts) hold the same stages starting before
    epoch ``begun``, so they give the same weights and lr factors in epochs 0 … begun − 1."""
    early = lambda stages: [s for s in stages or [] if s["epoch"] < begun]  # noqa: E731
    return early(old_stages) == early(new_stages)


def check_resume(run_dir: Path, record: RunRecord, has_checkpoint: bool, begun: Callable[[], int] | None = None) -> None:
    """ResumeError unless ``run_dir`` holds a run started with ``record``'s config and data (the
    keys in ``RESUMABLE`` may differ, those in ``FUTURE_ONLY`` from the epoch ``begun()`` on: epochs
    the checkpoint has begun, read only when such a key changed). Runs from before ``run.yaml``
    existed resume unchecked."""
    old = RunRecord.load(run_dir)
    if old is None:
        if not has_checkpoint:
            raise ResumeError(f"--resume: {run_dir} holds no run to resume (no {RECORD}, no checkpoint); "
                              "drop --resume to start a new run there")
        return
    diff = old.differences(record, begun)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ResumeError(f"--resume continues the same run, but {run_dir} was started with other settings: {shown}. "
                          f"To train on from its weights with new settings or data, fine-tune into a new run "
                          f"directory: nnpes train CONFIG --init-from {run_dir} --run-dir NEW_DIR")
