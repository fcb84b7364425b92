"""One learning curve for a model trained in several runs: a run, then fine-tunes of it
(``--init-from``), each run's ``metrics.csv`` in order. Epochs and training time continue across
the joints, which the figure marks with vertical lines.

    python benchmarks/learning_curve_chain.py runs/first runs/continued --out benchmarks/figures/chain.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def chained(tables: list[dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], list[float]]:
    """``read_csv`` tables joined end to end: each later run's ``epoch`` and ``time_s`` go on from
    where the one before ended. Returns the joined table and the epochs where each later run began."""
    keys = sorted(set().union(*tables))
    offsets, epoch0, time0 = [], 0.0, 0.0
    for t in tables:
        t["epoch"], t["time_s"] = t["epoch"] + epoch0, t["time_s"] + time0
        offsets.append(epoch0)
        epoch0, time0 = t["epoch"][-1] + 1, t["time_s"][-1]
    joined = {k: np.concatenate([t.get(k, np.full(len(t["epoch"]), np.nan)) for t in tables]) for k in keys}
    return joined, offsets[1:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (or metrics.csv files), first run first")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)

    import matplotlib.pyplot as plt

    from nnpes.training.metrics import learning_curve_figure, read_csv

    paths = [Path(r) / "metrics.csv" if Path(r).is_dir() else Path(r) for r in args.runs]
    tables = [read_csv(path) for path in paths]
    for path, t in zip(paths, tables):
        if not t:
            raise SystemExit(f"{path}: no epochs recorded")
    joined, joints = chained(tables)
    fig = learning_curve_figure(joined)
    for ax in (ax for ax in fig.axes if ax.get_lines()):  # not the empty stress panel
        for x in joints:
            ax.axvline(x, color="0.6", lw=0.8, ls=":")
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    best = int(np.nanargmin(joined["valid_f_mae_meV_A"]))
    print(f"{args.out}: {len(joined['epoch'])} epochs, {joined['time_s'][-1] / 3600:.2f} h of training; "
          f"best valid F {joined['valid_f_mae_meV_A'][best]:.3g} meV/Å at epoch {int(joined['epoch'][best])}")


if __name__ == "__main__":
    main()
