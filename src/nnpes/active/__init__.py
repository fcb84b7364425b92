"""Committees and active learning: ``Ensemble`` (stacked members, vmapped evaluation and training),
disagreement measures, biased committee MD, trust-level selection and the crash-safe loop (oracles: ``nnpes.oracle``).
See ``nnpes.active.loop`` for the state machine behind ``nnpes active-learn``."""

from nnpes.active.ensemble import Ensemble, load_ensemble
from nnpes.active.loop import ActiveLearning, run
from nnpes.config.active import ActiveConfig, FitConfig, load_config
from nnpes.active.selection import classify, select

__all__ = [
    "ActiveConfig", "ActiveLearning", "Ensemble", "FitConfig", "classify", "load_config", "load_ensemble", "run",
    "select",
]
