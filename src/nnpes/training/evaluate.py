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


def _spearman(x, y) -> float | None:
    """Spearman rank correlation, None where undefined (fewer than 3 points, or a constant input)."""
    if len(x) < 3:
        return None
    import warnings

    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: nan, reported as None
        rho = float(spearmanr(x, y).statistic)
    return rho if np.isfinite(rho) else None


def uncertainty_metrics(atoms_list: Sequence[Atoms], preds: Sequence[dict], std_scale: float = 1.0) -> dict:
    """A committee's uncertainty next to its errors, from ``Ensemble.predict`` output (standard
    deviations already multiplied by ``std_scale``); DeePMD ``dp model-devi``'s measures plus a check
    of their calibration against the labels. meV units.

    σ_i is atom i's force standard deviation over the members (the norm of the 3-vector spread,
    DeePMD's devi_f); |ΔF_i| the committee-mean force error. Calibrated σ means RMS(|ΔF|/σ) ≈ 1, and,
    for Gaussian errors, about 68 % (95 %) of force components within σ/√3 (2σ/√3) of the label."""
    f_std = np.concatenate([p["force_std"] for p in preds])
    out = {
        "committee_size": int(np.shape(preds[0]["member_energy"])[0]),
        "std_scale": float(std_scale),
        "mean_force_std_meV_per_A": 1e3 * float(np.mean(f_std)) if f_std.size else None,
        "mean_max_force_std_meV_per_A": 1e3 * float(np.mean([p["max_force_std"] for p in preds])),
        "mean_energy_std_meV_per_atom": 1e3 * float(np.mean([p["energy_std_per_atom"] for p in preds])),
    }
    sigma, err, comp, max_sigma, max_err = [], [], [], [], []
    for atoms, p in zip(atoms_list, preds):
        _, f, _ = reference_labels(atoms)
        if f is None or not len(atoms):
            continue
        diff = np.asarray(p["forces"], np.float64) - np.asarray(f, np.float64)
        sigma.append(np.asarray(p["force_std"], np.float64))
        err.append(np.linalg.norm(diff, axis=-1))
        comp.append(np.abs(diff))
        max_sigma.append(float(np.max(sigma[-1])))
        max_err.append(float(np.max(err[-1])))
    if not sigma:
        return out
    sigma, err, comp = np.concatenate(sigma), np.concatenate(err), np.concatenate(comp)
    comp_sigma = np.broadcast_to(sigma[:, None] / np.sqrt(3.0), comp.shape)  # per-component σ
    ok = sigma > 0
    out.update({
        "force_components_within_1std": float(np.mean(comp < comp_sigma)),
        "force_components_within_2std": float(np.mean(comp < 2.0 * comp_sigma)),
        "rms_force_error_over_std": float(np.sqrt(np.mean((err[ok] / sigma[ok]) ** 2))) if ok.any() else None,
        "spearman_max_force_std_vs_max_force_error": _spearman(max_sigma, max_err),
        "n_structures_with_forces": len(max_sigma),
    })
    return out


def evaluate(potential, atoms_list: Sequence[Atoms], *, out: str | Path | None = None,
             plot: str | Path | None = None, title: str = "") -> dict:
    """Errors of ``potential`` on labelled ``atoms_list``; optionally write JSON and a parity PNG.
    For a committee (an ``Ensemble``) the errors are the committee mean's, and ``uncertainty``
    (``uncertainty_metrics``) holds its calibrated uncertainty."""
    if not atoms_list:
        raise ValueError("evaluate: no structures given")
    preds = potential.predict(list(atoms_list))
    cmp = predict_and_compare(potential, atoms_list, preds)
    if cmp["e_ref"].size == 0 and cmp["f_ref"].size == 0:
        raise ValueError("evaluate: the structures carry neither energy nor force labels")
    metrics = error_metrics(cmp)
    if "force_std" in preds[0]:
        metrics["uncertainty"] = uncertainty_metrics(atoms_list, preds, getattr(potential, "std_scale", 1.0))
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
    if m.get("uncertainty"):
        lines.extend(format_uncertainty(m["uncertainty"]))
    return "\n".join(lines)


def format_uncertainty(u: dict) -> list[str]:
    """The lines of ``format_metrics`` for a committee's ``uncertainty``."""
    num = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    lines = [f"committee of {u['committee_size']} members, uncertainty (standard deviations × std_scale "
             f"{u['std_scale']:.3g}):",
             f"{'  force std / atom':<22} mean {num(u['mean_force_std_meV_per_A'], '9.3f')}  "
             f"max per structure (mean) {u['mean_max_force_std_meV_per_A']:.3f}  meV/Å",
             f"{'  energy std':<22} mean {u['mean_energy_std_meV_per_atom']:9.3f}  meV/atom"]
    if "force_components_within_1std" in u:
        lines += [
            f"{'  calibration':<22} force components within 1σ {100 * u['force_components_within_1std']:.1f} %, "
            f"2σ {100 * u['force_components_within_2std']:.1f} % (Gaussian: 68.3 %, 95.4 %); "
            f"RMS(|ΔF|/σ) {num(u['rms_force_error_over_std'], '.3f')} (1 if calibrated)",
            f"{'  ranking':<22} Spearman(max force std, max |ΔF|) over "
            f"{u['n_structures_with_forces']} structures: {num(u['spearman_max_force_std_vs_max_force_error'], '.3f')}",
        ]
    return lines
