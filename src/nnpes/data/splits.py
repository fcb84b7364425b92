"""Reproducible train/valid/test splits: by seed and counts or fractions, or explicit index files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nnpes.data.validate import DataError

SPLITS = ("train", "valid", "test")


def read_index_file(path, n: int | None = None) -> np.ndarray:
    """Frame indices (int64) from a text file (one integer per line; blank lines and lines
    starting with '#' skipped) or a ``.npy`` file of integers. With ``n``, each must be in [0, n).
    Duplicates are an error (they would silently weight a frame twice)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"index file not found: {path}")
    if path.suffix.lower() == ".npy":
        values = np.load(path, allow_pickle=False)
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer) or values.size == 0):
            raise DataError(path, f"expected a 1-D integer array, got dtype {values.dtype} shape {values.shape}")
        indices = values.astype(np.int64)
    else:
        out = []
        with open(path) as f:
            for line_no, line in enumerate(f, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                try:
                    out.append(int(text))
                except ValueError:
                    raise DataError(path, f"line {line_no}: {text!r} is not an integer index") from None
        indices = np.asarray(out, np.int64)
    _check_indices(indices, n, str(path))
    return indices


def _check_indices(indices: np.ndarray, n: int | None, what: str) -> None:
    if (indices < 0).any():
        raise DataError(what, f"negative index {int(indices[indices < 0][0])}")
    if n is not None and (indices >= n).any():
        raise DataError(what, f"index {int(indices[indices >= n][0])} out of range for {n} structures")
    values, counts = np.unique(indices, return_counts=True)
    if (counts > 1).any():
        raise DataError(what, f"index {int(values[counts > 1][0])} appears {int(counts[counts > 1][0])} times")


def _size(spec, n: int, name: str) -> int:
    if isinstance(spec, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a count (int) or a fraction (float), got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        if spec < 0:
            raise ValueError(f"{name}: count {spec} is negative")
        return int(spec)
    if isinstance(spec, (float, np.floating)):
        if not 0.0 <= spec <= 1.0:
            raise ValueError(f"{name}: fraction {spec} is not in [0, 1] (use an int for a count)")
        return int(np.floor(spec * n + 1e-9))  # floor: fractions summing to <= 1 always fit
    raise TypeError(f"{name}: expected int, float, index array or index file path, got {type(spec).__name__}")


def split_indices(n: int, *, train, valid, test=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint, sorted int64 index arrays {"train", "valid", "test"} over ``n`` structures.

    Each of ``train``/``valid``/``test`` is a count (int), a fraction of ``n`` (float, rounded down),
    explicit indices (sequence / array) or an index file (str / Path, see ``read_index_file``).
    ``test=None`` takes every structure the other two leave. Drawn splits come from one
    permutation of the structures that explicit splits leave free, seeded by ``seed``: the same
    inputs always give the same split, and growing ``train`` keeps the smaller training set.
    Overlapping, out-of-range or duplicate indices, or asking for more than ``n``, raise.
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n = {n} is negative")
    specs = {"train": train, "valid": valid, "test": test}
    out: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        if isinstance(spec, (str, os.PathLike)):
            out[name] = read_index_file(spec, n)
        elif isinstance(spec, (list, tuple, np.ndarray)):
            arr = np.asarray(spec)
            if arr.size and not np.issubdtype(arr.dtype, np.integer):
                raise TypeError(f"{name}: explicit indices must be integers, got dtype {arr.dtype}")
            arr = arr.astype(np.int64).reshape(-1)
            _check_indices(arr, n, f"{name} indices")
            out[name] = arr
    taken = np.concatenate([out[k] for k in out]) if out else np.zeros(0, np.int64)
    values, counts = np.unique(taken, return_counts=True)
    if (counts > 1).any():
        clash = int(values[counts > 1][0])
        owners = [k for k in out if clash in out[k]]
        raise DataError("split", f"index {clash} is in both {owners[0]} and {owners[1]}")
    free = np.setdiff1d(np.arange(n), taken)
    free = free[np.random.default_rng(seed).permutation(len(free))]
    start = 0
    for name, spec in specs.items():
        if name in out:
            continue
        if spec is None:
            if name != "test":
                raise ValueError(f"{name}: a count, fraction or indices is required (only test may be None)")
            continue  # the remainder, after the other drawn splits
        size = _size(spec, n, name)
        if start + size > len(free):
            raise ValueError(
                f"{name}: asked for {size} structures but only {len(free) - start} of {n} are left "
                f"(train={train!r}, valid={valid!r}, test={test!r})"
            )
        out[name] = free[start : start + size]
        start += size
    if "test" not in out:
        out["test"] = free[start:]
    return {name: np.sort(out[name]).astype(np.int64) for name in SPLITS}


def bootstrap_indices(n: int, seed: int) -> np.ndarray:
    """A bootstrap resample of ``n`` structures: ``n`` indices in [0, n) drawn with replacement by
    ``seed``, sorted (about 63 % of the structures appear, some several times)."""
    return np.sort(np.random.default_rng(seed).integers(0, n, n)).astype(np.int64)
