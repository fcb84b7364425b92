"""A Lightning callback for the nequip peer run (benchmarks/peer_configs/nequip_rmd17_ethanol.yaml):
after each epoch (validated every epoch), one CSV row with the seconds since training started and the validation
metrics, so its learning curve has the same wall-clock x axis as nnpes's metrics.csv ``time_s``.
Imported by nequip's venv (``PYTHONPATH=benchmarks``); it needs lightning only."""

from __future__ import annotations

import csv
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class WallClock(Callback):
    def __init__(self, path: str = "wallclock.csv"):
        self.path = Path(path)
        self.start = None
        self.keys = None

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # Lightning validates inside the training epoch and calls callbacks before the module's
        # own hooks, so the validation metrics are in callback_metrics here, not at validation end.
        if self.start is None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        row = {"epoch": trainer.current_epoch, "time_s": round(time.perf_counter() - self.start, 2), **metrics}
        new = self.keys is None
        self.keys = self.keys or list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.keys, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
