"""Committees and active learning: ``Ensemble`` (stacked members, vmapped evaluation and training),
disagreement measures, biased committee MD, trust-level selection, oracles and the crash-safe loop.
See ``nnpes.active.loop`` for the state machine behind ``nnpes active-learn``."""

from nnpes.active.ensemble import Ensemble, FitConfig, load_ensemble
from nnpes.active.loop import ActiveConfig, ActiveLearning, load_config, run
from nnpes.active.oracle import CalculatorOracle, LabelStore, OracleError, PySCFOracle, label, make_executor, make_oracle, tblite_oracle
from nnpes.active.selection import classify, select

__all__ = [
    "ActiveConfig", "ActiveLearning", "CalculatorOracle", "Ensemble", "FitConfig", "LabelStore", "OracleError",
    "PySCFOracle", "classify", "label", "load_config", "load_ensemble", "make_executor", "make_oracle", "run",
    "select", "tblite_oracle",
]
