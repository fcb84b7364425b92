"""Running oracles at scale and keeping every label: executors (serial, thread, process, Dask) and
the crash-safe store.

``LabelStore`` is an append-only JSON-lines file: every result (or failure) is one line, written,
flushed and fsynced before anything uses it, keyed by a request id so a resumed run never repeats
a finished call. A key is stored once: writing a key the store already holds is a no-op (the first
record is the label), and a file that holds a key twice (a replay, or two writers before run
directories were locked) reads back with its first record only, so nothing trains on duplicates.
A line cut short by a crash is dropped when the store is opened. Failures are recorded and
skipped, never fatal.

Two kinds of failure are told apart (``failure`` in the record): ``"oracle"``, the oracle raised or
returned nonsense (final: the key is settled and never tried again), and ``"worker"``, the process
running the call died (``BrokenProcessPool``: killed, out of memory). A worker failure does not
settle its key: ``label_into_store`` retries it at once (a bounded number of rounds, on a rebuilt
pool), and a later call (a resume) labels it again; its new record replaces the old one. Only
settled keys count as held (``keys()``, ``len``). Process-pool workers die with their parent, even
after a ``kill -9`` of it (``_worker_init``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
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


WORKER = "worker"  # the failure kind of a call whose worker process died
ORACLE = "oracle"  # the failure kind of a call the oracle itself failed


def _worker_init(parent: int) -> None:
    """Initializer of process-pool workers: one OpenMP thread, and die with the parent process.
    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); a thread
    polling ``os.getppid()`` every second covers other systems and an oracle that holds the GIL."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="nnpes-parent-watch", daemon=True).start()


def make_executor(kind: str = "process", workers: int | None = None, address: str | None = None) -> Executor:
    """``serial``, ``thread``, ``process`` (spawned workers with OMP_NUM_THREADS=1, so no forked
    JAX runtime; they die with this process) or ``dask`` (``distributed.Client(address).get_executor()``; a local cluster
    without an address). Any other ``concurrent.futures.Executor`` can be passed to ``label``."""
    if kind == "serial":
        return SerialExecutor()
    if kind == "thread":
        return ThreadPoolExecutor(workers)
    if kind == "process":
        import multiprocessing

        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                                   initargs=(os.getpid(),))
    if kind == "dask":
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ValueError("oracle executor 'dask' needs the 'cluster' extra: pip install 'nnpes[cluster]'") from None
        client = Client(address) if address else Client(LocalCluster(n_workers=workers or 1, threads_per_worker=1))
        return client.get_executor()
    raise ValueError(f"executor {kind!r}: expected serial, thread, process or dask")


# ---- the store -------------------------------------------------------------------------------


def settles(record: dict) -> bool:
    """Whether ``record`` is final for its key: a label, or a failure of the oracle (not of the
    worker process running it). Records written before ``failure`` existed name a dead worker in
    their error ("executor: BrokenProcessPool: ..."), so a resume retries those calls too."""
    if record["status"] == "ok":
        return True
    failure = record.get("failure")
    if failure is None:
        failure = WORKER if str(record.get("error", "")).startswith("executor: BrokenProcessPool") else ORACLE
    return failure != WORKER


class LabelStore:
    """Append-only JSON-lines store of oracle results keyed by request id; one record per key (a
    key whose worker died holds its latest record until a label or an oracle failure settles it)."""

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

    def _read(self) -> dict[str, dict]:
        """key → record in file order: each key's first settling record, else its latest."""
        records, self._keys = {}, set()
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.path}: line {lineno} is not a valid label record ({e})") from None
                self._take(records, record)
        return records

    def _take(self, records: dict, record: dict) -> bool:
        key = record["key"]
        if key in self._keys:
            return False
        records[key] = record
        if settles(record):
            self._keys.add(key)
        return True

    def append(self, record: dict) -> bool:
        """Store ``record`` (fsynced); False, and nothing written, when its key is already settled."""
        if record["key"] in self._keys:
            return False
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return self._take(self._records, record)

    def add_result(self, key: str, atoms: Atoms, result: dict | None, error: str | None = None,
                   failure: str = ORACLE, **meta) -> bool:
        """Store one oracle result (or its ``error``, of kind ``failure``: ORACLE or WORKER); False
        when ``key`` is already settled."""
        rec = {
            "key": key, "status": "ok" if error is None else "failed", **meta,
            "numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist(),
        }
        if error is not None:
            rec["error"] = error
            rec["failure"] = failure
        else:
            rec["energy"] = float(result["energy"])
            rec["forces"] = np.asarray(result["forces"]).tolist()
            if result.get("stress") is not None:
                rec["stress"] = np.asarray(result["stress"]).tolist()
        return self.append(rec)

    @property
    def records(self) -> list[dict]:
        """One record per key, in the order the keys were first stored."""
        return list(self._records.values())

    def keys(self) -> set[str]:
        """The settled keys (a label or an oracle failure): those never labelled again."""
        return set(self._keys)

    def pending(self) -> set[str]:
        """Keys whose last call failed because its worker died: labelled again by the next call."""
        return set(self._records) - self._keys

    def atoms(self, status: str = "ok") -> list[Atoms]:
        """Labelled structures (SinglePointCalculator) in the order they were stored."""
        return [record_to_atoms(r) for r in self._records.values() if r["status"] == status]

    def __len__(self) -> int:
        """Settled keys: the oracle calls that count against a budget."""
        return len(self._keys)


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


def _round(executor: Executor, oracle, todo: list, finish) -> list:
    """Submit every call of ``todo`` and store each result as it arrives; returns the calls whose
    worker died (stored as WORKER failures)."""
    futures, died = {}, []
    for key, atoms, m in todo:
        try:
            futures[executor.submit(_call, oracle, atoms)] = (key, atoms, m)
        except BrokenProcessPool as e:  # the pool broke before this call could start
            died.append((key, atoms, m))
            finish(key, atoms, m, None, f"worker died: {type(e).__name__}: {e}", WORKER)
    for fut in as_completed(futures):
        key, atoms, m = futures[fut]
        try:
            result, error = fut.result()
        except Exception as e:  # noqa: BLE001 - an executor error on one call is that call's failure
            if _worker_died(e):  # infrastructure, not the oracle: retried
                died.append((key, atoms, m))
                finish(key, atoms, m, None, f"worker died: {type(e).__name__}: {e}", WORKER)
                continue
            result, error = None, f"executor: {type(e).__name__}: {e}"
        finish(key, atoms, m, result, error)
    return died


def _worker_died(err: BaseException) -> bool:
    """Whether an executor's error means the process running the call died: a broken process pool,
    or Dask's ``KilledWorker`` (matched by name: dask is optional)."""
    return isinstance(err, BrokenProcessPool) or type(err).__name__ == "KilledWorker"


class OracleWorkersDied(RuntimeError):
    """Oracle calls whose worker processes kept dying (killed, out of memory); the calls are kept
    pending in the store and a resume retries them."""


def label_into_store(structures: Sequence[Atoms], keys: Sequence[str], oracle: Callable, store: LabelStore,
                     executor: Executor | None = None, on_result: Callable | None = None,
                     meta: Sequence[dict] | None = None, *, rebuild: Callable[[], Executor] | None = None,
                     retries: int = 2) -> dict:
    """Label the structures whose key is not yet settled in ``store`` through ``executor`` (serial
    when None). Each result is fsynced into the store as it arrives, before ``on_result(key)`` runs.
    A call whose worker died (``BrokenProcessPool``) is stored as a WORKER failure and retried, up to
    ``retries`` more rounds, on ``rebuild()``'s new executor (the broken one is shut down; without
    ``rebuild`` the same executor is tried again). Calls still failing that way raise
    ``OracleWorkersDied`` at the end (the rest are stored). Returns counts ``{"submitted", "ok",
    "failed", "skipped", "retried"}`` ("failed": oracle failures)."""
    done = store.keys()
    executor = executor or SerialExecutor()
    todo = []
    for k, a, m in zip(keys, structures, meta or [{}] * len(keys)):
        if k not in done:  # a key already settled, or given twice, is labelled once
            done.add(k)
            todo.append((k, a, m))
    counts = {"submitted": len(todo), "ok": 0, "failed": 0, "skipped": len(keys) - len(todo), "retried": 0}

    def finish(key, atoms, m, result, error, failure=ORACLE):
        if error is None:
            try:
                result = check_result(result, atoms)
            except Exception as e:  # noqa: BLE001
                result, error = None, f"bad oracle result: {type(e).__name__}: {e}"
        store.add_result(key, atoms, result, error, failure, **m)
        if failure == ORACLE:
            counts["ok" if error is None else "failed"] += 1
        if on_result is not None:
            on_result(key)

    if isinstance(executor, SerialExecutor):
        # One call at a time, each stored before the next starts: a crash loses at most the call
        # that was running.
        for key, atoms, m in todo:
            finish(key, atoms, m, *_call(oracle, atoms))
        return counts
    current = executor
    try:
        for attempt in range(retries + 1):
            if attempt:
                counts["retried"] += len(todo)
                if rebuild is not None:
                    current.shutdown(wait=False, cancel_futures=True)
                    current = rebuild()
            todo = _round(current, oracle, todo, finish)
            if not todo:
                break
    finally:
        if current is not executor:  # the pools built here; the caller's own is the caller's to shut down
            current.shutdown(wait=True, cancel_futures=True)
    if todo:
        raise OracleWorkersDied(
            f"{len(todo)} oracle call(s) failed {retries + 1} times because their worker process died (killed, or "
            f"out of memory?), e.g. {todo[0][0]!r}; they are kept in {store.path} and retried by --resume")
    return counts
