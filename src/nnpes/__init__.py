"""nnpes: neural-network potential energy surfaces in JAX."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("nnpes")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+local"

from nnpes import keys  # noqa: E402,F401
from nnpes.graph import atoms_to_graph  # noqa: E402,F401
from nnpes.graph.neighbors import neighbor_list  # noqa: E402,F401

# Heavier entry points load on first use, so `import nnpes` stays quick for the CLI.
_LAZY = {
    "build_potential": "nnpes.potential",
    "load_potential": "nnpes.potential",
    "Potential": "nnpes.potential",
    "Ensemble": "nnpes.active.ensemble",
    "read_structures": "nnpes.data",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nnpes' has no attribute {name!r}")
