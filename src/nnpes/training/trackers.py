"""Where a run's per-epoch metrics rows go: ``metrics.csv`` always, TensorBoard event files and
Weights & Biases when the ``output`` section switches them on. Every tracker has ``write(row)``
(one row per epoch: the ``metrics.COLUMNS`` dict) and ``close()``; the trainer calls the one
``Trackers`` object that holds them all.

    output:
      tensorboard: true              # RUN/tensorboard (pip install 'nnpes[tensorboard]')
      wandb: {project: cu, mode: offline}   # wandb.init arguments; true: project "nnpes"

TensorBoard and W&B get every column except ``epoch`` (their step axis) as a scalar, NaN values
(e.g. stress when not trained) left out.
"""

from __future__ import annotations

import math
from pathlib import Path

from nnpes.training.metrics import CSVLog

TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"


def scalars(row: dict) -> dict[str, float]:
    """The row's numeric, finite values except ``epoch``."""
    out = {}
    for k, v in row.items():
        if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


class TensorBoardLog:
    """TensorBoard scalars (tensorboardX event files) under ``logdir``, step = epoch. On resume the
    events of epochs at or after ``resume_epoch`` (written before a kill) are purged by TensorBoard."""

    def __init__(self, logdir: str | Path, resume_epoch: int = 0):
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        self.writer = SummaryWriter(str(self.logdir), purge_step=resume_epoch if resume_epoch > 0 else None)

    def write(self, row: dict) -> None:
        for k, v in scalars(row).items():
            self.writer.add_scalar(k, v, global_step=int(row["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLog:
    """A Weights & Biases run: ``wandb.init(**settings, config=config)`` (project ``nnpes`` unless
    given, files under the run directory unless ``dir`` is given). Its id is kept in
    ``RUN/wandb_run_id`` so that ``--resume`` continues the same W&B run."""

    def __init__(self, settings: dict, run_dir: str | Path, config: dict, resume: bool = False):
        import wandb

        run_dir = Path(run_dir)
        kw = {"project": "nnpes", "dir": str(run_dir), **settings, "config": config}
        id_file = run_dir / WANDB_ID_FILE
        if resume and id_file.exists() and "id" not in settings:
            kw.update(id=id_file.read_text().strip(), resume="allow")
        self.run = wandb.init(**kw)
        if getattr(self.run, "id", None):
            id_file.write_text(str(self.run.id))

    def write(self, row: dict) -> None:
        self.run.log(scalars(row), step=int(row["epoch"]))

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """All trackers of a run behind one ``write(row)`` / ``close()``."""

    def __init__(self, trackers):
        self.trackers = list(trackers)

    def write(self, row: dict) -> None:
        for t in self.trackers:
            t.write(row)

    def close(self) -> None:
        for t in self.trackers:
            close = getattr(t, "close", None)
            if close is not None:
                close()


def open_trackers(cfg, run_dir: str | Path, resume_epoch: int = 0, log=None) -> Trackers:
    """``metrics.csv`` plus what ``cfg.output`` switches on (``tensorboard``, ``wandb``)."""
    run_dir = Path(run_dir)
    out = cfg.output
    trackers = [CSVLog(run_dir / "metrics.csv", resume_epoch=resume_epoch)]
    if out.tensorboard:
        trackers.append(TensorBoardLog(run_dir / TENSORBOARD_DIR, resume_epoch))
        if log is not None:
            log(f"tensorboard: event files in {run_dir / TENSORBOARD_DIR} (tensorboard --logdir {run_dir})")
    if out.wandb:
        settings = out.wandb if isinstance(out.wandb, dict) else {}
        w = WandbLog(settings, run_dir, cfg.to_dict(), resume=resume_epoch > 0)
        trackers.append(w)
        if log is not None:
            log(f"wandb: run {getattr(w.run, 'name', '') or getattr(w.run, 'id', '')} {getattr(w.run, 'url', '') or ''}".rstrip())
    return Trackers(trackers)
