"""Per-epoch metrics: reduce the error sums of a pass, log rows to ``metrics.csv``, plot the curve."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

COLUMNS = [
    "epoch", "step", "time_s", "lr", "train_loss", "valid_loss",
    "train_e_mae_meV_atom", "train_f_mae_meV_A", "train_f_rmse_meV_A",
    "valid_e_mae_meV_atom", "valid_e_rmse_meV_atom", "valid_f_mae_meV_A", "valid_f_rmse_meV_A",
    "valid_s_mae_meV_A3",
]


def reduce_sums(total: dict, n_loss: float, loss_sum: float) -> dict:
    """Error sums of ``nnpes.training.loss.error_sums`` summed over batches → MAE/RMSE in meV."""
    t = {k: float(v) for k, v in total.items()}

    def div(a, n):
        return t.get(a, 0.0) / t[n] if t.get(n, 0.0) > 0 else math.nan

    return {
        "loss": loss_sum / n_loss if n_loss else math.nan,
        "e_mae_meV_atom": 1e3 * div("e_abs_atom", "e_n"),
        "e_rmse_meV_atom": 1e3 * math.sqrt(div("e_sq_atom", "e_n")) if t.get("e_n") else math.nan,
        "f_mae_meV_A": 1e3 * div("f_abs", "f_n"),
        "f_rmse_meV_A": 1e3 * math.sqrt(div("f_sq", "f_n")) if t.get("f_n") else math.nan,
        "s_mae_meV_A3": 1e3 * div("s_abs", "s_n"),
    }


def add_sums(acc: dict | None, new: dict) -> dict:
    new = {k: np.asarray(v, np.float64) for k, v in new.items()}
    if acc is None:
        return new
    return {k: acc.get(k, 0.0) + v for k, v in new.items()}


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
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, COLUMNS)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, COLUMNS, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


def read_csv(path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) if r[k] not in ("", "nan") else np.nan for r in rows]) for k in COLUMNS if rows}


def plot_learning_curve(csv_path, png_path) -> Path:
    """Loss and force/energy MAE vs epoch (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = read_csv(csv_path)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    if d:
        ep = d["epoch"]
        axes[0].semilogy(ep, d["train_loss"], label="train")
        axes[0].semilogy(ep, d["valid_loss"], label="valid")
        axes[0].set_ylabel("loss")
        axes[1].semilogy(ep, d["train_f_mae_meV_A"], label="train")
        axes[1].semilogy(ep, d["valid_f_mae_meV_A"], label="valid")
        axes[1].set_ylabel("force MAE (meV/Å)")
        axes[2].semilogy(ep, d["train_e_mae_meV_atom"], label="train")
        axes[2].semilogy(ep, d["valid_e_mae_meV_atom"], label="valid")
        axes[2].set_ylabel("energy MAE (meV/atom)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
