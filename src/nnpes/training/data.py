"""The data side of a training run: read the configured files, check elements, split.

Returns lists of labelled ase.Atoms for train / valid / test (``Splits``); graphs are built by the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from nnpes.graph.stats import check_known_elements


LABEL_KEYS = ("energy_key", "forces_key", "stress_key")  # data.* keys passed to read_structures
# Fields of a read frame that are not labels under another name (for "keys found in it").
_NOT_LABELS = {"source", "frame", "numbers", "positions", "momenta", "masses", "initial_charges",
               "initial_magmoms", "tags", "pbc", "energy_not_used", "forces_not_used", "stress_not_used"}


def check_train_labels(frames: list) -> str | None:
    """Refuse (``DataError``, naming the files and the keys found in them) a training split with no
    energy and no force label at all: it would train at loss 0 and save a meaningless model. With
    forces but no energies, return a warning (E0 and the energy offset are then arbitrary); else None."""
    from nnpes.data import DataError
    from nnpes.data.labels import raw_labels

    labels = [raw_labels(a) for a in frames]
    has_energy = any("energy" in x for x in labels)
    has_forces = any("forces" in x for x in labels)
    if has_energy:
        return None
    files = ", ".join(dict.fromkeys(str(a.info.get("source", "?")) for a in frames))
    found = sorted({k for a in frames for k in (*a.info, *a.arrays)} - _NOT_LABELS)
    keys = f"keys found: {', '.join(found) if found else 'none'}"
    if not has_forces:
        raise DataError(files, f"no energy or force labels in the training split ({keys}); "
                               "set data.energy_key / data.forces_key")
    return (f"{files}: the training split has force labels but no energy labels ({keys}): E0 and the energy "
            "offset of the model are arbitrary, its energies are meaningful only up to a constant; "
            "set data.energy_key if the energies are stored under another name")


@dataclass(frozen=True)
class Splits:
    """The labelled structures (lists of ase.Atoms) of each split of a run; ``valid`` and ``test``
    may be empty, ``train`` never is."""

    train: list
    valid: list
    test: list

    def held_out(self) -> tuple[str, list]:
        """What a finished run is evaluated on: ``("test", test)``, or ``("valid", valid)`` without a
        test split (both empty: nothing to evaluate)."""
        return ("test", self.test) if self.test else ("valid", self.valid)

    def sizes(self) -> dict[str, int]:
        """Structures in each split: ``{"train": n, "valid": n, "test": n}``."""
        return {f.name: len(getattr(self, f.name)) for f in fields(self)}


def _count(value, n: int) -> int:
    return int(round(value * n)) if isinstance(value, float) else int(value)


def _read(path: str, dcfg, elements):
    from nnpes.data import DataError, read_structures

    atoms = read_structures(path, index=dcfg.index, energy_unit=dcfg.energy_unit, format=dcfg.format,
                            **{k: getattr(dcfg, k) for k in LABEL_KEYS if getattr(dcfg, k) is not None})
    if not atoms:
        raise DataError(path, f"no structures selected (index {dcfg.index!r})")
    check_known_elements(atoms, elements)  # names the file and the frame's index in it
    return atoms


def load_splits(dcfg, elements) -> Splits:
    """The structures of each split, read and split as a ``DataConfig`` says."""
    from nnpes.data import split_indices

    for p in dcfg.train_files + [dcfg.valid, dcfg.test]:
        if p is not None and not Path(p).exists():
            raise FileNotFoundError(f"data file {p!r} not found")
    pool = []
    for path in dcfg.train_files:
        pool.extend(_read(path, dcfg, elements))
    n = len(pool)
    valid = _read(dcfg.valid, dcfg, elements) if dcfg.valid else None
    test = _read(dcfg.test, dcfg, elements) if dcfg.test else None

    if dcfg.train_indices:  # index files fix the split; without a valid/test file: nothing there
        idx = split_indices(
            n, train=dcfg.train_indices,
            valid=dcfg.valid_indices or [],
            test=dcfg.test_indices or [], seed=dcfg.split_seed,
        )
    else:
        n_valid = 0 if valid is not None else _count(dcfg.n_valid, n)
        n_test = 0 if (test is not None or dcfg.n_test is None) else _count(dcfg.n_test, n)
        n_train = n - n_valid - n_test if dcfg.n_train is None else _count(dcfg.n_train, n)
        if n_train <= 0 or n_train + n_valid + n_test > n:
            raise ValueError(
                f"data: cannot split {n} structures from {dcfg.train_files} into "
                f"train {n_train} / valid {n_valid} / test {n_test}"
            )
        # structures left over (n_train set explicitly) are not used, not silently made test data
        idx = split_indices(n, train=n_train, valid=n_valid, test=n_test, seed=dcfg.split_seed)
    out = {name: [pool[int(i)] for i in ix] for name, ix in idx.items()}
    splits = Splits(train=out.get("train", []), valid=out.get("valid", []) if valid is None else valid,
                    test=out.get("test", []) if test is None else test)
    if not splits.train:
        raise ValueError("data: the training set is empty")
    return splits
