"""Test-set errors of a potential and parity plots.

Errors are reported in meV: energy per atom (meV/atom) and per structure (meV), force components
(meV/Å, also per element of the atom the force acts on), stress components (meV/Å³) where labelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms, units

from nnpes.data.labels import reference_labels

EV_PER_A3_IN_GPA = 1.0 / units.GPa  # 1 eV/Å³ = 160.2177 GPa


def _stats(err: np.ndarray) -> dict:
    err = np.asarray(err, np.float64).ravel()
    if err.size == 0:
        return {"mae": None, "rmse": None, "n": 0}
    return {"mae": float(np.mean(np.abs(err)) * 1e3), "rmse": float(np.sqrt(np.mean(err**2)) * 1e3), "n": int(err.size)}


def predict_and_compare(potential, atoms_list: Sequence[Atoms], preds: Sequence[dict] | None = None) -> dict:
    """Predictions next to references, as flat numpy arrays (eV, eV/Å, eV/Å³). ``potential`` is
    anything with ``predict`` (a Potential or an Ensemble); ``preds``: its predictions if already made."""
    preds = potential.predict(list(atoms_list)) if preds is None else preds
    rows = {k: [] for k in ("e_ref", "e_pred", "n_atoms", "f_ref", "f_pred", "f_symbol", "s_ref", "s_pred")}
    for atoms, p in zip(atoms_list, preds):
        e, f, s = reference_labels(atoms)
        if e is not None:
            rows["e_ref"].append(float(e))
            rows["e_pred"].append(p["energy"])
            rows["n_atoms"].append(len(atoms))
        if f is not None:
            rows["f_ref"].append(np.asarray(f, np.float64))
            rows["f_pred"].append(p["forces"])
            rows["f_symbol"].extend(atoms.get_chemical_symbols())
        if s is not None and "stress" in p:
            rows["s_ref"].append(np.asarray(s).reshape(3, 3))
            rows["s_pred"].append(p["stress"])
    out = {}
    for k, v in rows.items():
        if k in ("f_ref", "f_pred"):
            out[k] = np.concatenate(v) if v else np.zeros((0, 3))
        elif k in ("s_ref", "s_pred"):
            out[k] = np.stack(v) if v else np.zeros((0, 3, 3))
        else:
            out[k] = np.asarray(v)
    return out


def error_metrics(cmp: dict) -> dict:
    """meV metrics from ``predict_and_compare`` output."""
    de = cmp["e_pred"] - cmp["e_ref"]
    df = cmp["f_pred"] - cmp["f_ref"]
    metrics = {
        "n_structures_with_energy": int(de.size),
        "energy_per_atom_meV": _stats(de / np.maximum(cmp["n_atoms"], 1)),
        "energy_per_structure_meV": _stats(de),
        "forces_meV_per_A": _stats(df),
        "forces_per_element_meV_per_A": {
            s: _stats(df[cmp["f_symbol"] == s]) for s in sorted(set(cmp["f_symbol"].tolist()))
        },
    }
    if cmp["s_ref"].size:
        metrics["stress_meV_per_A3"] = _stats(cmp["s_pred"] - cmp["s_ref"])
    return metrics


def error_label(err: dict, unit: str) -> str:
    """"MAE 1.41 meV/atom, RMSE 2.03 meV/atom" (``_stats`` output, meV units); stress adds a line in GPa."""
    text = f"MAE {err['mae']:.3g} {unit}, RMSE {err['rmse']:.3g} {unit}"
    if unit == "meV/Å³":
        gpa = 1e-3 * EV_PER_A3_IN_GPA
        text += f"\n(MAE {err['mae'] * gpa:.3g} GPa, RMSE {err['rmse'] * gpa:.3g} GPa)"
    return text


def parity_figure(cmp: dict, title: str = ""):
    """The matplotlib figure of ``parity_plot``; each panel's title names the quantity and its
    MAE/RMSE with units (``error_label``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("energy", "energy per atom (eV/atom)", "meV/atom"), ("forces", "force components (eV/Å)", "meV/Å")]
    if cmp["s_ref"].size:
        panels.append(("stress", "stress components (eV/Å³)", "meV/Å³"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (kind, label, unit) in zip(axes[0], panels):
        if kind == "energy":
            n = np.maximum(cmp["n_atoms"], 1)
            ref, pred = cmp["e_ref"] / n, cmp["e_pred"] / n
            ax.scatter(ref, pred, s=6, alpha=0.6)
            err = _stats(pred - ref)
        elif kind == "forces":
            syms = cmp["f_symbol"]
            for s in sorted(set(syms.tolist())):
                m = syms == s
                ax.scatter(cmp["f_ref"][m].ravel(), cmp["f_pred"][m].ravel(), s=3, alpha=0.4, label=s)
            if len(syms):
                ax.legend(markerscale=3, fontsize=8)
            ref, pred = cmp["f_ref"].ravel(), cmp["f_pred"].ravel()
            err = _stats(pred - ref)
        else:
            ref, pred = cmp["s_ref"].ravel(), cmp["s_pred"].ravel()
            ax.scatter(ref, pred, s=6, alpha=0.6)
            err = _stats(pred - ref)
        if ref.size:
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(f"{label}\n{error_label(err, unit)}", fontsize=9)
        ax.set_xlabel("reference")
        ax.set_ylabel("predicted")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def parity_plot(cmp: dict, path: str | Path, title: str = "") -> Path:
    """PNG with energy-per-atom, force-component and (if any) stress parity panels."""
    import matplotlib.pyplot as plt

    fig = parity_figure(cmp, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate(potential, atoms_list: Sequence[Atoms], *, out: str | Path | None = None,
             plot: str | Path | None = None, title: str = "") -> dict:
    """Errors of ``potential`` on labelled ``atoms_list``; optionally write JSON and a parity PNG."""
    if not atoms_list:
        raise ValueError("evaluate: no structures given")
    cmp = predict_and_compare(potential, atoms_list)
    if cmp["e_ref"].size == 0 and cmp["f_ref"].size == 0:
        raise ValueError("evaluate: the structures carry neither energy nor force labels")
    metrics = error_metrics(cmp)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(metrics, indent=2))
    if plot is not None:
        parity_plot(cmp, plot, title)
    return metrics


def format_metrics(m: dict) -> str:
    """A few human-readable lines."""
    lines = []

    def fmt(name, s, unit, scale=1.0):
        if s and s.get("n"):
            lines.append(f"{name:<22} MAE {s['mae'] * scale:9.3f}  RMSE {s['rmse'] * scale:9.3f}  {unit}  (n={s['n']})")

    fmt("energy / atom", m.get("energy_per_atom_meV"), "meV/atom")
    fmt("energy / structure", m.get("energy_per_structure_meV"), "meV")
    fmt("forces", m.get("forces_meV_per_A"), "meV/Å")
    for s, v in (m.get("forces_per_element_meV_per_A") or {}).items():
        fmt(f"  forces on {s}", v, "meV/Å")
    fmt("stress", m.get("stress_meV_per_A3"), "meV/Å³")
    fmt("stress", m.get("stress_meV_per_A3"), "GPa", 1e-3 * EV_PER_A3_IN_GPA)
    return "\n".join(lines)
