"""Oracles (reference calculators), executors to run them in parallel, and the crash-safe store.

An oracle is any picklable callable ``oracle(atoms) -> {"energy": eV, "forces": (N,3) eV/Å,
optionally "stress": (3,3) eV/Å³ ase sign}``. It raises on failure (``OracleError`` for a known one
such as an unconverged SCF); failures are recorded in the store and skipped, never fatal.

``LabelStore`` is an append-only JSON-lines file: every result (or failure) is one line, written,
flushed and fsynced before anything uses it, keyed by a request id so a resumed run never repeats
a finished call. A line cut short by a crash is dropped when the store is opened.
"""

from __future__ import annotations

import importlib
import json
import os
import traceback
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator


class OracleError(RuntimeError):
    """The oracle could not label a structure (SCF not converged, non-finite result, ...)."""


def _import(path: str):
    """'package.module.Name' or 'package.module:Name' → the object."""
    module, _, name = path.replace(":", ".").rpartition(".")
    if not module:
        raise ValueError(f"oracle calculator {path!r}: give an import path like 'ase.calculators.emt.EMT'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"oracle calculator {path!r} cannot be imported: {e}") from None


def _check(results: dict, atoms: Atoms) -> dict:
    e = float(results["energy"])
    f = np.asarray(results["forces"], np.float64).reshape(len(atoms), 3)
    if not np.isfinite(e) or not np.all(np.isfinite(f)):
        raise OracleError("non-finite energy or forces")
    out = {"energy": e, "forces": f}
    if results.get("stress") is not None:
        s = np.asarray(results["stress"], np.float64)
        if s.shape == (6,):
            xx, yy, zz, yz, xz, xy = s
            s = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        out["stress"] = s.reshape(3, 3)
    return out


class CalculatorOracle:
    """Any ASE calculator by import path and keyword arguments, built fresh in the worker (so the
    oracle pickles to a process pool or a Dask worker). Stress is computed for periodic cells."""

    def __init__(self, calculator: str, kwargs: dict | None = None, env: dict | None = None):
        self.calculator = calculator
        self.kwargs = dict(kwargs or {})
        self.env = dict(env or {})
        _import(calculator)  # fail at configuration time, not in a worker

    def __call__(self, atoms: Atoms) -> dict:
        for k, v in self.env.items():
            os.environ.setdefault(k, str(v))
        a = atoms.copy()
        a.calc = _import(self.calculator)(**self.kwargs)
        res = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
        if np.all(a.pbc):
            res["stress"] = a.get_stress(voigt=False)
        return _check(res, a)

    def __repr__(self):
        return f"CalculatorOracle({self.calculator!r}, {self.kwargs!r})"


def tblite_oracle(method: str = "GFN2-xTB", **kwargs) -> CalculatorOracle:
    """GFN2-xTB through tblite. xTB runs 10-100x slower with OpenMP threads here, so each call
    asks for one thread (process-pool workers are started with ``OMP_NUM_THREADS=1`` too)."""
    return CalculatorOracle("tblite.ase.TBLite", {"method": method, "verbosity": 0, **kwargs}, env={"OMP_NUM_THREADS": 1})


class PySCFOracle:
    """Kohn-Sham DFT with PySCF (default RKS PBE/def2-SVP with density fitting), molecules only.

    PySCF works in Hartree and Bohr: E [eV] = E_h · Hartree, F [eV/Å] = −∇E [E_h/Bohr] · Hartree/Bohr.
    An SCF that does not converge raises ``OracleError``."""

    def __init__(self, xc: str = "PBE", basis: str = "def2-SVP", density_fit: bool = True, charge: int = 0,
                 spin: int = 0, conv_tol: float = 1e-9, max_cycle: int = 100):
        self.xc, self.basis, self.density_fit = xc, basis, density_fit
        self.charge, self.spin, self.conv_tol, self.max_cycle = charge, spin, conv_tol, max_cycle

    def __call__(self, atoms: Atoms) -> dict:
        from ase.units import Bohr, Hartree
        from pyscf import dft, gto

        if np.any(atoms.pbc):
            raise OracleError("PySCFOracle labels molecules only (pbc must be False)")
        mol = gto.M(
            atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
            unit="Angstrom", basis=self.basis, charge=self.charge, spin=self.spin, verbose=0,
        )
        mf = (dft.RKS(mol) if self.spin == 0 else dft.UKS(mol))
        mf.xc, mf.conv_tol, mf.max_cycle = self.xc, self.conv_tol, self.max_cycle
        if self.density_fit:
            mf = mf.density_fit()
        e_h = mf.kernel()
        if not mf.converged:
            raise OracleError(f"SCF not converged in {self.max_cycle} cycles")
        grad = mf.nuc_grad_method().kernel()  # Ha/Bohr
        return _check({"energy": e_h * Hartree, "forces": -np.asarray(grad) * Hartree / Bohr}, atoms)


def make_oracle(spec: dict) -> Callable:
    """From a config ``oracle:`` section: ``{type: calculator, calculator: path, kwargs: {...}}``,
    ``{type: tblite, method: GFN2-xTB}`` or ``{type: pyscf, xc: PBE, basis: def2-SVP}``."""
    spec = dict(spec)
    kind = spec.pop("type", "calculator")
    if kind == "calculator":
        if "calculator" not in spec:
            raise ValueError("oracle: type 'calculator' needs 'calculator: module.Class'")
        return CalculatorOracle(spec.pop("calculator"), spec.pop("kwargs", None), spec.pop("env", None))
    if kind == "tblite":
        return tblite_oracle(**spec)
    if kind == "pyscf":
        return PySCFOracle(**spec)
    raise ValueError(f"oracle.type {kind!r}: expected 'calculator', 'tblite' or 'pyscf'")


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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LabelStore:
    """Append-only JSON-lines store of oracle results keyed by request id."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch()
            _fsync_dir(self.path.parent)
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
        records = []
        with open(self.path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{self.path}: line {lineno} is not a valid label record ({e})") from None
        return records

    def append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._records.append(record)

    def add_result(self, key: str, atoms: Atoms, result: dict | None, error: str | None = None, **meta) -> None:
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
        self.append(rec)

    @property
    def records(self) -> list[dict]:
        return list(self._records)

    def keys(self) -> set[str]:
        return {r["key"] for r in self._records}

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


def label(structures: Sequence[Atoms], keys: Sequence[str], oracle: Callable, store: LabelStore,
          executor: Executor | None = None, on_result: Callable | None = None, meta: Sequence[dict] | None = None) -> dict:
    """Label the structures whose key is not yet in ``store`` through ``executor`` (serial when
    None). Each result is fsynced into the store as it arrives, before ``on_result(key)`` runs.
    Returns counts ``{"submitted", "ok", "failed", "skipped"}``."""
    done = store.keys()
    executor = executor or SerialExecutor()
    futures = {}
    todo = [(k, a, m) for k, a, m in zip(keys, structures, meta or [{}] * len(keys)) if k not in done]
    counts = {"submitted": len(todo), "ok": 0, "failed": 0, "skipped": len(keys) - len(todo)}

    def finish(key, atoms, m, result, error):
        if error is None:
            try:
                result = _check(result, atoms)
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
