"""Oracles: the reference calculators that label structures.

An oracle is any picklable callable ``oracle(atoms) -> {"energy": eV, "forces": (N,3) eV/Å,
optionally "stress": (3,3) eV/Å³ ase sign}``. It raises on failure (``OracleError`` for a known one
such as an unconverged SCF). ``label`` runs one in this process and returns labelled copies; the
crash-safe, parallel path of active learning is ``nnpes.oracle.store.label_into_store``.

xTB on small molecules is 10-100x slower with OpenMP threads than without on a shared machine:
``tblite_oracle`` asks for one thread in each call; set ``OMP_NUM_THREADS=1`` before Python starts
when xTB drives MD in this process (the quickstart does).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from nnpes.data.labels import voigt_to_matrix


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


def check_result(results: dict, atoms: Atoms) -> dict:
    """An oracle's result as float64 arrays (stress as (3,3)); ``OracleError`` if not finite."""
    e = float(results["energy"])
    f = np.asarray(results["forces"], np.float64).reshape(len(atoms), 3)
    if not np.isfinite(e) or not np.all(np.isfinite(f)):
        raise OracleError("non-finite energy or forces")
    out = {"energy": e, "forces": f}
    if results.get("stress") is not None:
        out["stress"] = voigt_to_matrix(results["stress"])
    return out


def calculator_results(atoms: Atoms) -> dict:
    """Energy, forces and (fully periodic cells) stress from ``atoms.calc``. The calculator's
    forces, not constraint-adjusted ones (FixCom rewrites forces in ase 3.29): a label must be
    −∂E/∂R of the reference energy."""
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(apply_constraint=False)}
    if np.all(atoms.pbc):
        results["stress"] = atoms.get_stress(voigt=False)
    return check_result(results, atoms)


def labelled(atoms: Atoms, result: dict) -> Atoms:
    """A copy of ``atoms`` (constraints dropped) carrying ``result`` as a SinglePointCalculator."""
    copy = atoms.copy()
    copy.set_constraint()
    copy.calc = SinglePointCalculator(copy, **result)
    return copy


def snapshot(atoms: Atoms) -> Atoms:
    """A labelled copy of ``atoms`` holding its calculator's current results."""
    return labelled(atoms, calculator_results(atoms))


class CalculatorOracle:
    """Any ASE calculator by import path and keyword arguments, built fresh in the worker (so the
    oracle pickles to a process pool or a Dask worker). Stress is computed for periodic cells."""

    def __init__(self, calculator: str, kwargs: dict | None = None, env: dict | None = None):
        self.calculator = calculator
        self.kwargs = dict(kwargs or {})
        self.env = dict(env or {})
        cls = _import(calculator)  # fail at configuration time, not in every call in a worker
        try:
            inspect.signature(cls).bind(**self.kwargs)
        except TypeError as e:
            raise ValueError(f"oracle kwargs {self.kwargs!r} do not fit {calculator}: {e}") from None
        except ValueError:  # no signature to check (a builtin)
            pass

    def make_calculator(self):
        """The ASE calculator itself (e.g. to drive MD with the reference method)."""
        for k, v in self.env.items():
            os.environ.setdefault(k, str(v))
        return _import(self.calculator)(**self.kwargs)

    def __call__(self, atoms: Atoms) -> dict:
        a = atoms.copy()
        a.calc = self.make_calculator()
        return calculator_results(a)

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
        return check_result({"energy": e_h * Hartree, "forces": -np.asarray(grad) * Hartree / Bohr}, atoms)


def make_oracle(spec: dict) -> Callable:
    """From a config ``oracle:`` section: ``{type: calculator, calculator: path, kwargs: {...}}``,
    ``{type: tblite, method: GFN2-xTB}`` or ``{type: pyscf, xc: PBE, basis: def2-SVP}``."""
    spec = dict(spec)
    kind = spec.pop("type", "calculator")
    if kind == "calculator":
        if "calculator" not in spec:
            raise ValueError("oracle: type 'calculator' needs 'calculator: module.Class'")
        _check_keys(spec, ("calculator", "kwargs", "env"), kind)
        return CalculatorOracle(spec.pop("calculator"), spec.pop("kwargs", None), spec.pop("env", None))
    if kind == "tblite":
        return tblite_oracle(**spec)  # any other key is a keyword of tblite's calculator
    if kind == "pyscf":
        _check_keys(spec, list(inspect.signature(PySCFOracle).parameters), kind)
        return PySCFOracle(**spec)
    raise ValueError(f"oracle.type {kind!r}: expected 'calculator', 'tblite' or 'pyscf'")


def _check_keys(spec: dict, allowed, kind: str) -> None:
    """ValueError naming a key of the ``oracle:`` section that type ``kind`` does not take."""
    for key in spec:
        if key not in allowed:
            raise ValueError(f"oracle: unknown key {key!r} for type {kind!r}; valid keys: {sorted(allowed)}")


def label(structures: Sequence[Atoms], oracle: Callable | None = None) -> list[Atoms]:
    """Labelled copies of ``structures`` by ``oracle`` (default GFN2-xTB), in order, in this
    process. A failing structure raises naming its index."""
    oracle = oracle if oracle is not None else tblite_oracle()
    out = []
    for k, atoms in enumerate(structures):
        try:
            out.append(labelled(atoms, check_result(oracle(atoms), atoms)))
        except Exception as e:  # the oracle's own errors vary (SCF not converged, ...)
            raise RuntimeError(f"oracle failed on structure {k} ({atoms.get_chemical_formula()}): {e}") from e
    return out
