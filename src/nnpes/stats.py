"""Deprecated: training-set statistics moved to ``nnpes.graph.stats`` (kept for old imports)."""

import warnings

from nnpes.graph.stats import DatasetStats, compute_stats, graph_stats  # noqa: F401

warnings.warn("nnpes.stats moved to nnpes.graph.stats; import from there", DeprecationWarning, stacklevel=2)
