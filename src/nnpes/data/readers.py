"""Read labelled structures from files into ``ase.Atoms`` in nnpes units (Å, eV, eV/Å, eV/Å³).

Formats, chosen by extension unless ``format`` is given:
  ``.npz``   MD17 / rMD17 / sGDML arrays (keys ``nuclear_charges, coords, energies, forces``
             or ``z, R, E, F``; ``E`` may be (M, 1); optional ``lattice`` makes it periodic)
  ``.json``  a JSON list: mlearn / pymatgen ``{"structure", "outputs"}`` entries (stress in kBar,
             VASP sign); a JSON object: an ASE JSON database
  ``.db``    ASE database (sqlite)
  other      anything ``ase.io.read`` reads (extxyz first)

Labels end up in a ``SinglePointCalculator`` (energy eV, forces eV/Å, stress eV/Å³ Voigt with
ase's sign: positive = tensile). Every frame is validated (``nnpes.data.validate``) before its
units are converted, so an error names the frame as the file numbers it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers
from ase.io.formats import string2index
from ase.stress import full_3x3_to_voigt_6_stress

from nnpes import keys
from nnpes.data.validate import DataError, check_options, validate_frame
from nnpes.errors import reading

# Energy units a file may use, as multiples of eV (ase.units is the one source of constants).
ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": units.kcal / units.mol,
    "kJ/mol": units.kJ / units.mol,
    "Hartree": units.Hartree,
    "Ha": units.Hartree,
    "Ry": units.Rydberg,
}
LENGTH_UNITS = {"Å": 1.0, "Ang": 1.0, "Angstrom": 1.0, "A": 1.0, "Bohr": units.Bohr}
KBAR = 0.1 * units.GPa  # eV/Å³ per kBar

# MD17/rMD17 (first) and sGDML (second) key names
_NPZ_KEYS = {
    "numbers": ("nuclear_charges", "z"),
    "positions": ("coords", "R"),
    "energy": ("energies", "E"),
    "forces": ("forces", "F"),
}


def _energy_factor(unit: str) -> float:
    if unit not in ENERGY_UNITS:
        raise ValueError(f"energy_unit {unit!r} is not one of {list(ENERGY_UNITS)}")
    return ENERGY_UNITS[unit]


def _force_factor(force_unit: str | None, energy_unit: str) -> float:
    """eV/Å per file force unit, e.g. 'kcal/mol/Å', 'Hartree/Bohr' (default: energy_unit per Å)."""
    if force_unit is None:
        return _energy_factor(energy_unit)
    energy, _, length = force_unit.rpartition("/")
    if energy not in ENERGY_UNITS or length not in LENGTH_UNITS:
        raise ValueError(
            f"force_unit {force_unit!r} is not '<energy>/<length>' with energy in {list(ENERGY_UNITS)} "
            f"and length in {list(LENGTH_UNITS)}"
        )
    return ENERGY_UNITS[energy] / LENGTH_UNITS[length]


def _parse_index(index):
    if isinstance(index, str):
        return string2index(index)
    if isinstance(index, (int, np.integer)):
        return int(index)
    if isinstance(index, slice):
        return index
    raise TypeError(f"index must be a str like ':' or '10:20', an int or a slice, got {index!r}")


def _select(n: int, index, path) -> np.ndarray:
    """Frame numbers (in the file) that ``index`` picks out of ``n`` frames."""
    if isinstance(index, int):
        if not -n <= index < n:
            raise IndexError(f"{path}: index {index} out of range for {n} frames")
        return np.array([index % n])
    return np.arange(n)[index]


# ---- format readers: each returns (atoms_list, frame_ids, labels_list) in file units --------


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file; a clear DataError for anything that is not one."""
    import zipfile

    if not zipfile.is_zipfile(path):  # np.load would talk of pickles, or fail with EOFError
        raise DataError(path, "is not a valid .npz file (not a zip archive of arrays"
                        + (", the file is empty)" if path.stat().st_size == 0 else ")"))
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(path, f"is not a valid .npz file ({type(err).__name__}: {err})") from None
    except ValueError as err:  # an array of Python objects
        raise DataError(path, f"holds an array that is not plain numbers ({err.args[0].split('.')[0]}); "
                        "nnpes reads numeric arrays only") from None


def _check_npz_units(path: Path, data: dict, energy_unit: str) -> None:
    """Refuse units the file states otherwise (sGDML's r_unit, e_unit); warn on rMD17 read as eV."""
    for key, expected in (("r_unit", LENGTH_UNITS), ("e_unit", None)):
        if key in data:
            stated = str(data[key])
            if expected is not None and stated not in expected:
                raise DataError(path, f"{key}={stated!r}: only lengths in Å are supported")
            if expected is None and ENERGY_UNITS.get(stated) != ENERGY_UNITS[energy_unit]:
                raise DataError(path, f"file states e_unit={stated!r} but energy_unit={energy_unit!r} was given")
    if energy_unit == "eV" and "e_unit" not in data and {"nuclear_charges", "old_energies"} <= set(data):
        warnings.warn(
            f"{path} looks like an rMD17 file (keys nuclear_charges, old_energies), whose energies are in "
            "kcal/mol, but energy_unit='eV' was given; pass energy_unit='kcal/mol' if the file is rMD17",
            stacklevel=5,  # _check_npz_units < _read_npz < _read_raw < read_structures < the caller
        )


def _npz_arrays(path: Path, data: dict):
    """(Z, R, E, F) found under any of their accepted keys, shape-checked: Z (atoms,) or (frames, atoms),
    R (frames, atoms, 3), E (frames,) or None, F like R or None."""
    def get(name, required):
        for k in _NPZ_KEYS[name]:
            if k in data:
                return k, data[k]
        if required:
            raise DataError(path, f"no {name} array: expected one of keys {list(_NPZ_KEYS[name])}, found {sorted(data)}")
        return None, None

    zkey, z = get("numbers", True)
    rkey, r = get("positions", True)
    ekey, e = get("energy", False)
    fkey, forces = get("forces", False)
    if r.ndim != 3 or r.shape[-1] != 3:
        raise DataError(path, f"{rkey!r} has shape {r.shape}, expected (frames, atoms, 3)")
    m, n = r.shape[:2]
    z = np.asarray(z)
    if z.shape not in ((n,), (m, n)):
        raise DataError(path, f"{zkey!r} has shape {z.shape}, expected ({n},) or ({m}, {n}) to match {rkey!r} {r.shape}")
    if e is not None:
        if e.shape not in ((m,), (m, 1)):
            raise DataError(path, f"{ekey!r} has shape {e.shape}, expected ({m},) or ({m}, 1)")
        e = e.reshape(m)
    if forces is not None and forces.shape != r.shape:
        raise DataError(path, f"{fkey!r} has shape {forces.shape}, expected {r.shape} like {rkey!r}")
    return z, r, e, forces


def _read_npz(path: Path, index, energy_unit):
    data = _load_npz(path)
    _check_npz_units(path, data, energy_unit)
    z, r, e, forces = _npz_arrays(path, data)
    cell, pbc = None, False
    if "lattice" in data:
        cell, pbc = np.asarray(data["lattice"], np.float64).reshape(3, 3), True
    ids = _select(len(r), index, path)
    atoms_list, labels_list = [], []
    for i in ids:
        numbers = z if z.ndim == 1 else z[i]
        atoms_list.append(Atoms(numbers=np.asarray(numbers, np.int64), positions=r[i], cell=cell, pbc=pbc))
        labels = {}
        if e is not None:
            labels[keys.ENERGY] = e[i]
        if forces is not None:
            labels[keys.FORCES] = forces[i]
        labels_list.append(labels)
    return atoms_list, ids, labels_list


def _pymatgen_atoms(structure: dict, path, frame) -> Atoms:
    try:
        cell = np.asarray(structure["lattice"]["matrix"], np.float64)
        sites = structure["sites"]
    except (KeyError, TypeError) as err:
        raise DataError(path, f"not a pymatgen Structure dict (missing {err})", frame) from None
    numbers, positions = [], []
    for k, site in enumerate(sites):
        species = site.get("species", [])
        if len(species) != 1 or float(species[0].get("occu", 1.0)) != 1.0:
            raise DataError(path, f"site {k} is not a single fully occupied element: {species}", frame)
        symbol = species[0].get("element")
        if symbol not in atomic_numbers or atomic_numbers[symbol] == 0:
            raise DataError(path, f"site {k} has unknown element symbol {symbol!r}", frame)
        numbers.append(atomic_numbers[symbol])
        positions.append(site["xyz"] if "xyz" in site else np.asarray(site["abc"], np.float64) @ cell)
    return Atoms(numbers=numbers, positions=np.asarray(positions, np.float64), cell=cell, pbc=True)


def _read_mlearn_json(path: Path, items: list, index):
    """mlearn: ``outputs.energy`` eV (total), ``outputs.forces`` eV/Å, ``outputs.virial_stress``
    kBar in VASP order xx yy zz xy yz zx and VASP sign (positive = compressive)."""
    ids = _select(len(items), index, path)
    atoms_list, labels_list = [], []
    for i in ids:
        item = items[i]
        if not isinstance(item, dict):
            raise DataError(path, f"expected a JSON object, got {type(item).__name__}", int(i))
        structure = item.get("structure", item)
        atoms = _pymatgen_atoms(structure, path, int(i))
        outputs = item.get("outputs", {}) or {}
        labels = {}
        if outputs.get("energy") is not None:
            labels[keys.ENERGY] = outputs["energy"]
        if outputs.get("forces") is not None:
            labels[keys.FORCES] = outputs["forces"]
        virial = outputs.get("virial_stress")
        if virial is not None:
            v = np.asarray(virial, np.float64)
            if v.shape != (6,):
                raise DataError(path, f"virial_stress has shape {v.shape}, expected (6,) [xx, yy, zz, xy, yz, zx]", int(i))
            xx, yy, zz, xy, yz, zx = v
            # to ase Voigt order (xx yy zz yz xz xy), kBar → eV/Å³, compressive-positive → tensile-positive
            labels[keys.STRESS] = -KBAR * np.array([xx, yy, zz, yz, zx, xy])
        if item.get("group") is not None:
            atoms.info["mlearn_group"] = item["group"]
        atoms_list.append(atoms)
        labels_list.append(labels)
    return atoms_list, ids, labels_list


def _read_ase_db(path: Path, index, db_type=None):
    import ase.db

    try:
        with ase.db.connect(str(path), type=db_type or "extract_from_name") as db:
            rows = list(db.select())
    except Exception as err:  # sqlite / json errors of many types
        raise DataError(path, f"could not be read as an ASE database: {type(err).__name__}: {err}") from err
    ids = _select(len(rows), index, path)
    atoms_list = [rows[i].toatoms() for i in ids]
    for i, atoms in zip(ids, atoms_list):
        atoms.info.update(rows[i].key_value_pairs)
        atoms.info["db_id"] = rows[i].id
    return atoms_list, ids, None


def _read_ase_io(path: Path, index, format):
    import ase.io
    from ase.io.formats import filetype

    try:
        fmt = format or filetype(str(path))
    except Exception as err:
        raise DataError(path, f"format not recognised by ase.io ({err}); pass format=...") from None
    # extxyz is read frame by frame, so the frame that fails is the one after the last good one
    sequential = fmt in ("extxyz", "xyz")

    def read(idx, start=0, step=1):
        out = []
        try:
            for atoms in ase.io.iread(str(path), index=idx, format=fmt):
                out.append(atoms)
        except Exception as err:  # ase raises many types; keep the cause, name file and frame
            hint = " (unknown element symbol?)" if isinstance(err, KeyError) else ""
            problem = f"could not be read as {fmt}: {type(err).__name__}: {err}{hint}"
            if sequential:
                frame = start + step * len(out)
                if fmt == "extxyz":  # ase indexes the whole file first: its error may be in any frame
                    frame = max(frame, _first_bad_xyz_frame(path, frame))
                raise DataError(path, problem, frame) from err
            raise DataError(path, f"{problem} (after {len(out)} frame(s) read)") from err
        return out

    if isinstance(index, int) and index >= 0:
        atoms_list = read(slice(index, index + 1), index)
        if not atoms_list:
            raise IndexError(f"{path}: index {index} out of range (the file has fewer frames)")
        return atoms_list, np.array([index]), None
    if isinstance(index, slice) and (index.start or 0) >= 0 and (index.stop is None or index.stop >= 0) and (
        index.step or 1
    ) > 0:
        start, step = index.start or 0, index.step or 1
        atoms_list = read(index, start, step)
        return atoms_list, start + step * np.arange(len(atoms_list)), None
    # negative indices or steps: the frame numbers need the length of the file
    everything = read(slice(None))
    ids = _select(len(everything), index, path)
    return [everything[i] for i in ids], ids, None


def _first_bad_xyz_frame(path: Path, default: int) -> int:
    """The first frame of an (ext)xyz file whose atom count, atom lines or length is wrong (an atom
    line has as many fields as the frame's first); ``default`` if none is found."""
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    pos, frame = 0, 0
    while pos < len(lines):
        if not lines[pos].strip():
            pos += 1
            continue
        try:
            n = int(lines[pos].split()[0])
        except ValueError:
            return max(frame - 1, 0)  # the frame before took this header as an atom line
        atoms = lines[pos + 2: pos + 2 + n]
        if len(atoms) < n or any(len(a.split()) != len(atoms[0].split()) for a in atoms):
            return frame
        pos, frame = pos + 2 + n, frame + 1
    return default


def _labels_from_atoms(atoms: Atoms, energy_key, forces_key, stress_key) -> dict:
    """Take the labels off a frame read by ase (calculator results, or info/arrays under the given
    keys), removing them there so the calculator attached afterwards is their only home."""
    results = dict(getattr(atoms.calc, "results", None) or {})
    labels = {}
    for name, key, store in (
        (keys.ENERGY, energy_key, atoms.info),
        (keys.FORCES, forces_key, atoms.arrays),
        (keys.STRESS, stress_key, atoms.info),
    ):
        if key is not None and key != name:
            if key in store:
                labels[name] = store.pop(key)
            elif key in results:
                labels[name] = results[key]
            if name in store:  # would override the chosen label downstream; keep it, renamed
                store[f"{name}_not_used"] = store.pop(name)
            continue
        if name in store:
            labels[name] = store.pop(name)
        elif name in results:
            labels[name] = results[name]
        elif name == keys.ENERGY and "free_energy" in results:
            labels[name] = results["free_energy"]
    return labels


def _read_raw(path: Path, index, format: str | None, energy_unit: str):
    """(format, (frames, their indices in the file, labels per frame or None)) by the file's kind."""
    fmt = format or {".npz": "npz", ".db": "db", ".json": "json"}.get(path.suffix.lower())
    if fmt == "npz":
        return fmt, _read_npz(path, index, energy_unit)
    if fmt == "db":
        return fmt, _read_ase_db(path, index)
    if fmt not in ("json", "mlearn"):
        return fmt, _read_ase_io(path, index, fmt)
    try:
        with open(path) as f:
            content = json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(path, f"is not valid JSON: {err}") from None
    if isinstance(content, dict) and ("structure" in content or content.get("@class") == "Structure"):
        content = [content]  # a single mlearn entry or pymatgen Structure
    if fmt == "mlearn" or isinstance(content, list):
        return "mlearn", _read_mlearn_json(path, content, index)
    return fmt, _read_ase_db(path, index, db_type="json")  # an ASE JSON database: rows keyed by id


def read_structures(
    path,
    *,
    index=":",
    energy_unit: str = "eV",
    format: str | None = None,
    force_unit: str | None = None,
    elements=None,
    min_distance: float = 0.5,
    require=(),
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> list[Atoms]:
    """Read, validate and convert the frames ``index`` (ase syntax: ":", "10:20", "-1", int) of ``path``.

    ``energy_unit`` is the unit of the file's energies (one of ``ENERGY_UNITS``: rMD17/MD17 files
    are "kcal/mol"); forces are taken to be in ``energy_unit``/Å unless ``force_unit`` says
    otherwise (e.g. "Hartree/Bohr"); stresses in ``energy_unit``/Å³ (mlearn JSON: kBar, fixed).
    ``format`` forces a reader: "npz", "mlearn", "db", or an ase.io format name.
    ``elements``, ``min_distance`` (Å) and ``require`` are passed to the validation.
    ``energy_key``/``forces_key``/``stress_key`` name extxyz info/array fields holding the labels
    (e.g. "REF_energy"). Returns a list of ``ase.Atoms`` with a ``SinglePointCalculator`` (eV, eV/Å,
    eV/Å³ Voigt, ase sign), ``atoms.info["source"]`` = file and ``atoms.info["frame"]`` = its index.
    Raises ``FileNotFoundError`` for a missing file and ``DataError`` (file, frame, problem) for bad data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"structure file not found: {path}")
    if path.is_dir():
        raise DataError(path, "is a directory; give a structure file (extxyz, npz, json, db, ...)")
    elements, require = check_options(elements, require)
    e_factor = _energy_factor(energy_unit)
    f_factor = _force_factor(force_unit, energy_unit)
    index = _parse_index(index)
    with reading(f"structure file {path}"):
        fmt, (atoms_list, ids, labels_list) = _read_raw(path, index, format, energy_unit)
    if labels_list is None:
        labels_list = [_labels_from_atoms(a, energy_key, forces_key, stress_key) for a in atoms_list]
    elif (energy_key, forces_key, stress_key) != (None, None, None):
        raise ValueError(f"energy_key/forces_key/stress_key apply to ase.io formats, not to {fmt} ({path})")
    s_factor = 1.0 if fmt == "mlearn" else e_factor  # mlearn stress was converted from kBar
    for atoms, frame, labels in zip(atoms_list, ids, labels_list):
        frame = int(frame)
        validate_frame(atoms, path, frame, elements=elements, min_distance=min_distance, require=require, labels=labels)
        _attach(atoms, labels, e_factor, f_factor, s_factor)
        atoms.info["source"] = os.fspath(path)
        atoms.info["frame"] = frame
    return atoms_list


def _attach(atoms: Atoms, labels: dict, e_factor: float, f_factor: float, s_factor: float) -> None:
    """Replace the frame's calculator by a SinglePointCalculator holding the converted labels
    (other results the file carried, e.g. dipoles, are kept unchanged)."""
    old = dict(getattr(atoms.calc, "results", None) or {})
    converted = ("energy", "free_energy", "forces", "stress", "energies", "stresses")
    results = {k: v for k, v in old.items() if k not in converted}
    for k in ("energies", "stresses"):  # per-atom energies / stresses, same unit as the totals
        if k in old:
            results[k] = np.asarray(old[k], np.float64) * e_factor
    if "free_energy" in old and keys.ENERGY in labels:  # else it would stand in for the energy
        results["free_energy"] = float(np.asarray(old["free_energy"], np.float64)) * e_factor
    if keys.ENERGY in labels:
        results["energy"] = float(np.asarray(labels[keys.ENERGY], np.float64).reshape(())) * e_factor
    if keys.FORCES in labels:
        results["forces"] = np.asarray(labels[keys.FORCES], np.float64) * f_factor
    if keys.STRESS in labels:
        stress = np.asarray(labels[keys.STRESS], np.float64)
        if stress.shape == (3, 3):
            stress = full_3x3_to_voigt_6_stress(stress)
        results["stress"] = stress * s_factor
    atoms.calc = SinglePointCalculator(atoms, **results)
