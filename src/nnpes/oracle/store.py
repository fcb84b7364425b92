"""Running oracles at scale and keeping every label: executors (serial, thread, process, Dask) and
the crash-safe store.

``LabelStore`` is an append-only JSON-lines file: every result (or failure) is one line, written,
flushed and fsynced before anything uses it, keyed by a request id so a resumed run never repeats
a finished call. A key is stored once: writing a key the store already holds is a no-op (the first
record is the label), and a file that holds a key twice (a replay, or two writers before run
directories were locked) reads back with its first record only, so nothing trains on duplicates.
A line cut short by a crash is dropped when the store is opened. Failures are recorded and
skipped, never fatal.
"""

from __future__ import annotations

import json
import os
import traceback
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from nnpes.files import fsync_dir
from nnpes.oracle.oracles import OracleError, check_result


# ---- executors -------------------------------------------------------------------------------


class SerialExecutor(Executor):
    """Runs each call at submit time in this process (debugging, tests, cheap oracles)."""

    def submit(self, fn, /, *args, **kwargs):
        fut = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - delivered through the future like a pool would
            fut.set_exception(e)
        return fut


def _single_thread_worker():
    os.environ["OMP_NUM_THREADS"] = "1"


def make_executor(kind: str = "process", workers: int | None = None, address: str | None = None) -> Executor:
    """``serial``, ``thread``, ``process`` (spawned workers with OMP_NUM_THREADS=1, so no forked
    JAX runtime) or ``dask`` (``distributed.Client(address).get_executor()``; a local cluster
    without an address). Any other ``concurrent.futures.Executor`` can be passed to ``label``."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "thread":
        return ThreadPoolExecutor(workers)
    if kind == "process":
        import multiprocessing

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_single_thread_worker)
    if kind == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ValueError("oracle executor 'dask' needs the 'cluster' extra: pip install 'nnpes[cluster]'") from None
        client = Client(address) if address else Client(LocalCluster(n_workers=workers or 1, threads_per_worker=1))
        return client.get_executor()
    raise ValueError(f"executor {kind!r}: expected serial, thread, process or dask")


# ---- the store -------------------------------------------------------------------------------


class LabelStore:
    """Append-only JSON-lines store of oracle results keyed by request id; one record per key."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch()
            fsync_dir(self.path.parent)
        self._repair()
        self._records = self._read()

    def _repair(self) -> None:
        """Drop a final line cut short by a crash (its call never finished, so it is redone)."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def _read(self) -> list[dict]:
        """The records in file order, each key's first record only."""
        records, self._keys = [], set()
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.path}: line {lineno} is not a valid label record ({e})") from None
                if record["key"] not in self._keys:
                    self._keys.add(record["key"])
                    records.append(record)
        return records

    def append(self, record: dict) -> bool:
        """Store ``record`` (fsynced); False, and nothing written, when its key is already held."""
        if record["key"] in self._keys:
            return False
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._records.append(record)
        self._keys.add(record["key"])
        return True

    def add_result(self, key: str, atoms: Atoms, result: dict | None, error: str | None = None, **meta) -> bool:
        """Store one oracle result (or its ``error``); False when ``key`` is already held."""
        rec = {
            "key": key, "status": "ok" if error is None else "failed", **meta,
            "numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist(),
        }
        if error is not None:
            rec["error"] = error
        else:
            rec["energy"] = float(result["energy"])
            rec["forces"] = np.asarray(result["forces"]).tolist()
            if result.get("stress") is not None:
                rec["stress"] = np.asarray(result["stress"]).tolist()
        return self.append(rec)

    @property
    def records(self) -> list[dict]:
        return list(self._records)

    def keys(self) -> set[str]:
        return set(self._keys)

    def atoms(self, status: str = "ok") -> list[Atoms]:
        """Labelled structures (SinglePointCalculator) in the order they were stored."""
        return [record_to_atoms(r) for r in self._records if r["status"] == status]

    def __len__(self) -> int:
        return len(self._records)


def record_to_atoms(rec: dict) -> Atoms:
    a = Atoms(numbers=rec["numbers"], positions=rec["positions"], cell=rec["cell"], pbc=rec["pbc"])
    a.info["al_key"] = rec["key"]
    if rec.get("status") == "ok":
        stress = rec.get("stress")
        a.calc = SinglePointCalculator(
            a, energy=rec["energy"], forces=np.asarray(rec["forces"]),
            **({"stress": np.asarray(stress)} if stress is not None else {}),
        )
    return a


def _call(oracle, atoms):
    try:
        return oracle(atoms), None
    except Exception as e:  # noqa: BLE001 - any oracle failure is recorded, not fatal
        return None, f"{type(e).__name__}: {e}" + ("" if isinstance(e, OracleError) else "\n" + traceback.format_exc(limit=3))


def label_into_store(structures: Sequence[Atoms], keys: Sequence[str], oracle: Callable, store: LabelStore,
          executor: Executor | None = None, on_result: Callable | None = None, meta: Sequence[dict] | None = None) -> dict:
    """Label the structures whose key is not yet in ``store`` through ``executor`` (serial when
    None). Each result is fsynced into the store as it arrives, before ``on_result(key)`` runs.
    Returns counts ``{"submitted", "ok", "failed", "skipped"}``."""
    done = store.keys()
    executor = executor or SerialExecutor()
    futures = {}
    todo = []
    for k, a, m in zip(keys, structures, meta or [{}] * len(keys)):
        if k not in done:  # a key already held, or given twice, is labelled once
            done.add(k)
            todo.append((k, a, m))
    counts = {"submitted": len(todo), "ok": 0, "failed": 0, "skipped": len(keys) - len(todo)}

    def finish(key, atoms, m, result, error):
        if error is None:
            try:
                result = check_result(result, atoms)
            except Exception as e:  # noqa: BLE001
                result, error = None, f"bad oracle result: {type(e).__name__}: {e}"
        store.add_result(key, atoms, result, error, **m)
        counts["ok" if error is None else "failed"] += 1
        if on_result is not None:
            on_result(key)

    if isinstance(executor, SerialExecutor):
        # One call at a time, each stored before the next starts: a crash loses at most the call
        # that was running.
        for key, atoms, m in todo:
            finish(key, atoms, m, *_call(oracle, atoms))
        return counts
    for key, atoms, m in todo:
        futures[executor.submit(_call, oracle, atoms)] = (key, atoms, m)
    for fut in as_completed(futures):
        key, atoms, m = futures[fut]
        try:
            result, error = fut.result()
        except Exception as e:  # noqa: BLE001 - a worker that died is a failed call, not a crash
            result, error = None, f"executor: {type(e).__name__}: {e}"
        finish(key, atoms, m, result, error)
    return counts
