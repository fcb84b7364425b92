"""Oracles (the reference methods that label structures) and the crash-safe way to run them."""

from nnpes.oracle.oracles import (  # noqa: F401
    CalculatorOracle, OracleError, PySCFOracle, check_result, label, labelled, make_oracle, snapshot,
    tblite_oracle,
)
from nnpes.oracle.store import LabelStore, SerialExecutor, label_into_store, make_executor, record_to_atoms  # noqa: F401
