"""What a training run ended with: ``TrainResult`` (``train``) and ``CommitteeResult`` (a committee),
also written as ``RUN/result.yaml``, last, so its presence says the run finished.

Both were string-keyed dicts before; ``result["model"]`` still works, with a ``DeprecationWarning``
(use ``result.model``).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nnpes.files import atomic_write_text

RESULT = "result.yaml"


@dataclass(frozen=True)
class _Summary:
    """What both results have (the run directory and the saved model's, as strings), saving, loading
    and the deprecated dict access."""

    run_dir: str
    model: str

    def save(self) -> None:
        """Write ``run_dir/result.yaml`` (atomically)."""
        atomic_write_text(Path(self.run_dir) / RESULT, yaml.safe_dump(dataclasses.asdict(self), sort_keys=False,
                                                                      allow_unicode=True))

    @classmethod
    def load(cls, run_dir: str | Path):
        """The result saved in ``run_dir``; keys this version does not know are dropped."""
        saved = yaml.safe_load((Path(run_dir) / RESULT).read_text()) or {}
        return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})

    # The dict access of the summary dict these replaced: ``result[key]``, ``result.get(key)``, ``key in result``.
    def __getitem__(self, key: str):
        if key not in self:
            raise KeyError(key)
        warnings.warn(f"result[{key!r}] is deprecated: the result of train() is a {type(self).__name__}; "
                      f"use result.{key}", DeprecationWarning, stacklevel=2)
        return getattr(self, key)

    def get(self, key: str, default=None):
        return self[key] if key in self else default

    def __contains__(self, key) -> bool:
        return key in {f.name for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class TrainResult(_Summary):
    """One model's run. ``epochs`` counts the epochs done (over resumes),
    ``elapsed_s`` their wall time (s); ``best_epoch`` is the epoch the saved (EMA) model comes from;
    ``n_compiles`` the train and eval step compilations of this process; ``test_metrics`` what
    ``nnpes.training.evaluate`` gave on the test split (the validation split without one; None
    without either)."""

    stop_reason: str
    epochs: int
    steps: int
    best_epoch: int
    best_valid_loss: float
    elapsed_s: float
    n_compiles: dict = field(default_factory=dict)
    n_padded_shapes: int = 0
    test_metrics: dict | None = None


@dataclass(frozen=True)
class CommitteeResult(_Summary):
    """A committee's run: ``model`` (= ``committee``) is the saved committee (``nnpes.Ensemble``),
    ``members`` the members' model directories, ``std_scale`` the uncertainty calibration and
    ``calibrated_on`` the split it was fitted on (None: not calibrated); ``test_metrics`` are the
    committee mean's, with the uncertainty."""

    committee: str
    members: list = field(default_factory=list)
    std_scale: float = 1.0
    calibrated_on: dict | None = None
    test_metrics: dict | None = None
