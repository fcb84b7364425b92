"""Per-epoch metrics: reduce the error sums of a pass, log rows to ``metrics.csv``, plot the curve."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np

from nnpes.files import atomic_write_text

# The first 14 columns are those of the first metrics.csv format (readers rely on them); later
# columns are only ever appended. MAE/RMSE in meV, stress in meV/Å³; loss_energy/forces/stress are
# the weighted loss's parts w_E·L_E, w_F·L_F, w_S·L_S (they add up to the loss).
COLUMNS = [
    "epoch", "step", "time_s", "lr", "train_loss", "valid_loss",
    "train_e_mae_meV_atom", "train_f_mae_meV_A", "train_f_rmse_meV_A",
    "valid_e_mae_meV_atom", "valid_e_rmse_meV_atom", "valid_f_mae_meV_A", "valid_f_rmse_meV_A",
    "valid_s_mae_meV_A3",
    "train_e_rmse_meV_atom", "train_s_mae_meV_A3", "train_s_rmse_meV_A3", "valid_s_rmse_meV_A3",
    "train_loss_energy", "train_loss_forces", "train_loss_stress",
    "valid_loss_energy", "valid_loss_forces", "valid_loss_stress",
]

def reduce_sums(total: dict, n_loss: float, loss_sum: float, term_sums: dict | None = None) -> dict:
    """Error sums of ``nnpes.training.loss.error_sums`` summed over batches → MAE/RMSE in meV
    (stress: meV/Å³; NaN where nothing was labelled or, for stress, not computed), and the mean
    loss and loss terms ``loss_energy``/``loss_forces``/``loss_stress`` from their sums (each
    batch's value times its number of real structures) over ``n_loss`` structures."""
    t = {k: float(v) for k, v in total.items()}

    def div(a, n):
        return t.get(a, 0.0) / t[n] if t.get(n, 0.0) > 0 else math.nan

    def mean(x):
        return x / n_loss if n_loss else math.nan

    out = {"loss": mean(loss_sum)}
    out.update({f"loss_{k}": mean(v) for k, v in (term_sums or {}).items()})
    for name, unit in (("e", "meV_atom"), ("f", "meV_A"), ("s", "meV_A3")):
        suffix = "_atom" if name == "e" else ""  # energy errors per atom
        out[f"{name}_mae_{unit}"] = 1e3 * div(f"{name}_abs{suffix}", f"{name}_n")
        out[f"{name}_rmse_{unit}"] = 1e3 * math.sqrt(div(f"{name}_sq{suffix}", f"{name}_n"))
    return out


def add_sums(acc: dict | None, new: dict) -> dict:
    new = {k: np.asarray(v, np.float64) for k, v in new.items()}
    if acc is None:
        return new
    return {k: acc.get(k, 0.0) + v for k, v in new.items()}


class EpochSums:
    """The host-side sums of one pass (train or validation) over batches of ``StepMetrics``: the
    loss and its terms weighted by each batch's number of real structures, and the error sums."""

    def __init__(self):
        self.n, self.loss, self.terms, self.errors = 0, 0.0, {}, None

    def add(self, m, n: int) -> float:
        """Add one step's metrics (``n`` real structures); returns its loss as a float."""
        loss = float(m.loss)
        self.n += n
        self.loss += loss * n
        for k, v in (m.terms or {}).items():
            self.terms[k] = self.terms.get(k, 0.0) + float(v) * n
        self.errors = add_sums(self.errors, m.sums)
        return loss

    def reduce(self) -> dict:
        return reduce_sums(self.errors or {}, self.n, self.loss, self.terms)

    def to_tree(self) -> dict:
        """The sums as a checkpointable tree (a stop inside an epoch saves them)."""
        return {"n": np.int64(self.n), "loss": np.float64(self.loss),
                "terms": {k: np.float64(v) for k, v in self.terms.items()},
                "errors": {k: np.asarray(v, np.float64) for k, v in (self.errors or {}).items()}}

    @classmethod
    def from_tree(cls, tree: dict | None) -> "EpochSums":
        sums = cls()
        if tree:
            sums.n, sums.loss = int(tree["n"]), float(tree["loss"])
            sums.terms = {k: float(v) for k, v in (tree.get("terms") or {}).items()}
            sums.errors = {k: np.asarray(v, np.float64) for k, v in (tree.get("errors") or {}).items()} or None
        return sums


def epoch_row(epoch: int, step: int, time_s: float, lr: float, train_m: dict, valid_m: dict) -> dict:
    """One metrics row: every ``COLUMNS`` key, ``train_X``/``valid_X`` from ``reduce_sums``' ``X``."""
    row = {"epoch": epoch, "step": step, "time_s": time_s, "lr": lr}
    for col in COLUMNS[4:]:
        split, key = col.split("_", 1)
        row[col] = (train_m if split == "train" else valid_m).get(key, math.nan)
    return row


class CSVLog:
    """``metrics.csv`` with one row per epoch, written before the epoch's checkpoint. On resume, rows
    from epochs at or after the resumed epoch (written before a kill that beat the checkpoint) are
    dropped, so the file holds exactly one row per finished epoch."""

    def __init__(self, path: str | Path, resume_epoch: int = 0):
        self.path = Path(path)
        rows = []
        if resume_epoch > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("epoch", "").isdigit() and int(r["epoch"]) < resume_epoch]
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, COLUMNS)
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, text.getvalue())  # a kill while rewriting keeps the old rows

    def write(self, row: dict) -> None:
        """Append one row, fsynced (it goes before the epoch's checkpoint, which is fsynced too)."""
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
            f.flush()
            os.fsync(f.fileno())


def read_csv(path) -> dict[str, np.ndarray]:
    """Columns of ``metrics.csv`` as float arrays: every column of the file, and every ``COLUMNS``
    key (NaN where a file written by an older version lacks it). Empty dict for a file without rows."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        names = list(reader.fieldnames or [])
    if not rows:
        return {}

    def value(r, k):
        v = r.get(k)
        return float(v) if v not in (None, "", "nan") else np.nan

    return {k: np.array([value(r, k) for r in rows]) for k in dict.fromkeys(COLUMNS + names)}


def learning_curve_figure(d: dict):
    """The learning-curve figure of ``read_csv`` columns: loss, loss terms, learning rate (top);
    energy, force and stress errors (bottom; the stress panel says so when stress was not trained).
    Train solid, validation dashed; log scales."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.6))
    (ax_loss, ax_terms, ax_lr), (ax_e, ax_f, ax_s) = axes
    ep = d.get("epoch", np.zeros(0))

    def curves(ax, key, ylabel, kinds=("mae",)):
        drawn = False
        for kind in kinds:
            for split, style in (("train", "-"), ("valid", "--")):
                y = d.get(key.format(split=split, kind=kind))
                if y is not None and np.any(np.isfinite(y) & (y > 0)):
                    ax.semilogy(ep, y, style, label=f"{split} {kind.upper()}" if kind else split)
                    drawn = True
        ax.set_ylabel(ylabel)
        return drawn

    curves(ax_loss, "{split}_loss", "loss (weighted, see train.log)", kinds=("",))
    for term, color in (("energy", "C0"), ("forces", "C1"), ("stress", "C2")):
        for split, style in (("train", "-"), ("valid", "--")):
            y = d.get(f"{split}_loss_{term}")
            if y is not None and np.any(np.isfinite(y) & (y > 0)):
                ax_terms.semilogy(ep, y, style, color=color, label=f"{split} {term}")
    ax_terms.set_ylabel("loss terms w·L")
    lr = d.get("lr")
    if lr is not None and np.any(np.isfinite(lr) & (lr > 0)):
        ax_lr.semilogy(ep, lr, color="k", label="lr")
    ax_lr.set_ylabel("learning rate")
    curves(ax_e, "{split}_e_{kind}_meV_atom", "energy error (meV/atom)", ("mae", "rmse"))
    curves(ax_f, "{split}_f_{kind}_meV_A", "force error (meV/Å)", ("mae", "rmse"))
    if not curves(ax_s, "{split}_s_{kind}_meV_A3", "stress error (meV/Å³)", ("mae", "rmse")):
        ax_s.text(0.5, 0.5, "stress not trained", ha="center", va="center", transform=ax_s.transAxes)
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_learning_curve(csv_path, png_path) -> Path:
    """``learning_curve_figure`` of ``metrics.csv`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = learning_curve_figure(read_csv(csv_path))
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
