"""Short range, measured (issue 15): two-atom curves of every element pair of a model, from 0.3 Å to
its cutoff, and one bond-breaking path, against GFN2-xTB (tblite) and, where installed and
converged, PySCF (PBE/def2-SVP).

The model is evaluated without and with ``pair_repulsion: zbl`` over the same weights (the term is
fixed and untrained, so adding it to a trained model is what training with it gives wherever the
training data have no pair inside the covalent outer radius 0.8 (R_i + R_j)), with r_out per pair
from the training data (``outer_radii_from_data``, as training sets it) and with the covalent r_out
alone. Energies are
relative to the pair at the cutoff (dimers) or to the molecule as read (path). Table: energy at 0.3 Å,
and the distance below which the curve stops rising (first r, going inwards from GFN2-xTB's
minimum r_eq, where E(r − Δr) < E(r); "-" if it rises all the way to 0.3 Å) and the largest
fall of the energy met on that walk (0 for a curve that only rises); and the same walk from the
curve's own minimum within 1.5 r_eq (its own bond length, which for a model is that of its data).

    taskset -c 0 python benchmarks/dimers.py runs/my/model --out benchmarks/figures
"""

from __future__ import annotations

import argparse
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
from ase import Atoms

R_MIN = 0.3  # Å


def oracles() -> dict:
    """name → oracle(multiplicity): GFN2-xTB, and PBE/def2-SVP where PySCF is installed."""
    from functools import lru_cache

    from nnpes.oracle import tblite_oracle

    # A stretched radical's SCF may not converge at 300 K: retry with more Fermi smearing.
    out = {"GFN2-xTB": lru_cache()(lambda m: [tblite_oracle(multiplicity=m),
                                              tblite_oracle(multiplicity=m, electronic_temperature=3000.0, max_iterations=1000)])}
    try:
        import pyscf  # noqa: F401

        from nnpes.oracle import PySCFOracle

        out["PBE/def2-SVP"] = lru_cache()(lambda m: [PySCFOracle(spin=m - 1)])
    except ImportError:
        pass
    return out


def label(oracle, atoms: Atoms) -> float:
    """Energy in eV (odd electron counts, e.g. C–H and O–H, as doublets), NaN where every setting
    of the oracle fails (an SCF that does not converge)."""
    for attempt in oracle(1 + int(atoms.numbers.sum()) % 2):
        try:
            return float(attempt(atoms)["energy"])
        except Exception as e:  # noqa: BLE001 - any failure of the reference is a gap in its curve
            error = e
    d = atoms.get_all_distances().max()
    warnings.warn(f"{atoms.get_chemical_formula()} ({d:.2f} Å): oracle failed ({type(error).__name__}: {error})")
    return np.nan


def model_energies(pot, structures) -> np.ndarray:
    with warnings.catch_warnings():  # every short pair is closer than the data: that is the point here
        warnings.simplefilter("ignore")
        return np.array([r["energy"] for r in pot.predict(structures, compute_stress=False)])


def repulsion_below(r: np.ndarray, e: np.ndarray, k_eq: int) -> tuple[float | None, float]:
    """Walking inwards from r[k_eq] (the reference's minimum): the first r where the energy falls
    again (None if it rises all the way to r[0]), and the largest such fall, eV (0 if none)."""
    stop, peak, dip = None, -np.inf, 0.0
    for i in range(k_eq, -1, -1):
        if not np.isfinite(e[i]):
            continue
        if stop is None and i < k_eq and e[i] < e[i + 1]:
            stop = float(r[i + 1])
        peak = max(peak, e[i])
        dip = max(dip, peak - e[i])
    return stop, dip


def with_zbl(pot, covalent: bool = False):
    """``pot`` with the ZBL term on: its own radii if trained with it, else the r_out that training
    with it would have given (from the model card's shortest distances), or with ``covalent`` the
    covalent r_out alone (0.8 (R_i + R_j), the term before radii came from the data)."""
    from nnpes.models.repulsion import outer_radii_from_data
    from nnpes.testing import with_pair_repulsion

    if pot.config.pair_repulsion == "zbl" and not covalent:
        return pot
    outer = None if covalent else outer_radii_from_data(pot.shortest_distances or {}, pot.config.numbers)
    return with_pair_repulsion(pot, "zbl", outer)


def bond_path(structure: Atoms, a: str, b: str, r_max: float = 3.0, n: int = 40):
    """``structure`` with the shortest a–b bond stretched (moving the b atom along it) from 0.6 to
    ``r_max`` Å; returns (distances, structures, equilibrium distance)."""
    sym = np.array(structure.get_chemical_symbols())
    d = structure.get_all_distances()
    ia, ib = min(((i, j) for i in np.flatnonzero(sym == a) for j in np.flatnonzero(sym == b)), key=lambda p: d[p])
    unit = (structure.positions[ib] - structure.positions[ia]) / d[ia, ib]
    rs = np.unique(np.concatenate([np.linspace(0.6, r_max, n), [d[ia, ib]]]))
    out = []
    for r in rs:
        s = structure.copy()
        s.positions[ib] = s.positions[ia] + r * unit
        out.append(s)
    return rs, out, float(d[ia, ib])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="saved potential or run directory")
    p.add_argument("--out", default="benchmarks/figures")
    p.add_argument("--name", default=None, help="figure name stem (default: from the model path)")
    p.add_argument("--molecule", default=None, help="file with a molecule for the bond path (rMD17 npz, extxyz)")
    p.add_argument("--bond", default="O-H", help="element pair of the stretched bond")
    p.add_argument("--points", type=int, default=60)
    p.add_argument("--reference", default=None,
                   help="JSON of an earlier run of this script on the same elements: reuse its oracle curves")
    args = p.parse_args(argv)

    from nnpes.potential import load_potential
    from nnpes.potential.build import saved_model_dir

    pot = load_potential(saved_model_dir(args.model))
    from nnpes.testing import with_pair_repulsion

    pots = {"model": with_pair_repulsion(pot, "none"), "model + ZBL": with_zbl(pot),
            "model + ZBL, covalent r_out": with_zbl(pot, covalent=True)}
    refs = oracles()
    old = json.loads(Path(args.reference).read_text()) if args.reference else None
    if old is not None:  # reuse the oracle curves (same grid): name → None marks a stored reference
        refs = {k: None for k in next(iter(old["curves"].values())) if not k.startswith("model")}
    name = args.name or Path(args.model).resolve().name
    rc = pot.cutoff
    rs = np.geomspace(R_MIN, rc, args.points)
    curves, table = {}, []
    for a, b in itertools.combinations_with_replacement(pot.elements, 2):
        dimers = [Atoms([a, b], positions=[[0, 0, 0], [r, 0, 0]]) for r in rs]
        c = {k: model_energies(v, dimers) for k, v in pots.items()}
        c.update({k: np.array(old["curves"][f"{a}-{b}"][k]) if old else np.array([label(o, d) for d in dimers])
                  for k, o in refs.items()})
        c = {k: v - v[np.isfinite(v)][-1] for k, v in c.items()}  # relative to the pair at the cutoff
        curves[f"{a}-{b}"] = c
        ref = c[next(iter(refs))]
        k_eq = int(np.nanargmin(ref))
        row = {"pair": f"{a}-{b}", "r_eq": round(float(rs[k_eq]), 3)}
        for k, v in c.items():
            stop, dip = repulsion_below(rs, v, k_eq)
            row[f"E({R_MIN} Å) {k}"] = round(float(v[0]), 2)
            row[f"stops repulsive {k}"] = None if stop is None else round(stop, 3)
            row[f"largest fall inwards {k}"] = round(dip, 2)
            # the same walk from the curve's own minimum inside 1.5 r_eq (its own bond length)
            k_own = int(np.nanargmin(np.where(rs <= 1.5 * rs[k_eq], v, np.inf)))
            own_stop, own_dip = repulsion_below(rs, v, k_own)
            row[f"own minimum {k}"] = round(float(rs[k_own]), 3)
            row[f"largest fall below own minimum {k}"] = round(own_dip, 2)
        table.append(row)
        print(json.dumps(row))

    path = None
    if args.molecule:
        from nnpes.data import read_structures

        a, b = args.bond.split("-")
        mol = read_structures(args.molecule, index="0")[0]
        prs, structures, r_eq = bond_path(mol, a, b)
        e = {k: model_energies(v, structures) for k, v in pots.items()}
        e.update({k: np.array(old["path"]["energies"][k]) if old else np.array([label(o, s) for s in structures])
                  for k, o in refs.items()})
        k_eq = int(np.argmin(np.abs(prs - r_eq)))
        e = {k: v - v[k_eq] for k, v in e.items()}  # relative to the molecule as read
        path = {"bond": args.bond, "r_eq": r_eq, "r": prs.tolist(), "energies": {k: v.tolist() for k, v in e.items()}}
        ref = next(iter(refs))
        for k in pots:
            err = np.abs(e[k] - e[ref])
            print(json.dumps({"path": args.bond, "curve": k, f"max |ΔE| vs {ref} for r ≤ {r_eq + 0.3:.2f} Å (eV)":
                              round(float(np.nanmax(err[prs <= r_eq + 0.3])), 3),
                              "E(3 Å) (eV)": round(float(e[k][-1]), 2), f"E(3 Å) {ref} (eV)": round(float(e[ref][-1]), 2),
                              "E(0.6 Å) (eV)": round(float(e[k][0]), 2), f"E(0.6 Å) {ref} (eV)": round(float(e[ref][0]), 2)}))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"dimers_{name}.json").write_text(json.dumps(
        {"model": str(args.model), "r": rs.tolist(), "table": table,
         "curves": {k: {n: v.tolist() for n, v in c.items()} for k, c in curves.items()}, "path": path}, indent=1))
    plot(rs, curves, path, out / f"dimers_{name}.png", title=f"{pot!r}")
    print(f"figure: {out / f'dimers_{name}.png'}")


def plot(rs, curves, path, filename, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(curves) + (path is not None)
    cols = 4
    fig, axes = plt.subplots((panels + cols - 1) // cols, cols, figsize=(4 * cols, 3.4 * ((panels + cols - 1) // cols)))
    axes = np.ravel(axes)
    styles = {"model": dict(color="C3"), "model + ZBL": dict(color="C0"),
              "model + ZBL, covalent r_out": dict(color="C0", ls="-.", lw=0.8), "GFN2-xTB": dict(color="k", ls="--"),
              "PBE/def2-SVP": dict(color="0.5", ls=":")}
    for ax, (pair, c) in zip(axes, curves.items()):
        for k, v in c.items():
            ax.plot(rs, v, label=k, **styles.get(k, {}))
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"{pair} dimer")
        ax.set_xlabel("r (Å)")
        ax.set_ylabel("E − E(r_c) (eV)")
        ax.axhline(0, color="0.8", lw=0.5)
    if path is not None:
        ax = axes[len(curves)]
        for k, v in path["energies"].items():
            ax.plot(path["r"], v, label=k, **styles.get(k, {}))
        ax.axvline(path["r_eq"], color="0.8", lw=0.5)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(f"ethanol {path['bond']} stretched")
        ax.set_xlabel(f"{path['bond']} distance (Å)")
        ax.set_ylabel("E − E(as read) (eV)")
    for ax in axes[panels:]:
        ax.axis("off")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(filename, dpi=110)


if __name__ == "__main__":
    main()
