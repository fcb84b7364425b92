"""The checkpointed state of a training run: the step's ``TrainState`` plus the host bookkeeping.

A checkpoint is one flat mapping with the field names of every earlier version (``variables``,
``opt_state``, ``ema``, ``step``, ``epoch``, ``best_loss``, ``best_epoch``, ``lr_scale``,
``plateau_bad``, ``stop_bad``, ``elapsed``), so checkpoints written before ``TrainState`` existed
load and resume unchanged. A run stopped by ``max_time`` inside an epoch also saves ``batch`` (the
batches of that epoch done) and ``partial`` (the epoch's metric sums so far), so it resumes at the
next batch; fields a checkpoint lacks take their defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from nnpes.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from nnpes.training.step import TrainState


@dataclass
class Progress:
    """Host-side bookkeeping of a run (never traced, so float64 on the host whatever JAX's x64):
    epochs done, best validation loss and its epoch, plateau ``lr_scale``, the plateau and
    early-stopping counters and training time (s, summed over resumes)."""

    epoch: int = 0
    best_loss: float = float("inf")
    best_epoch: int = -1
    lr_scale: float = 1.0
    plateau_bad: int = 0
    stop_bad: int = 0
    elapsed: float = 0.0
    batch: int = 0  # batches of epoch ``epoch`` already done (a stop inside an epoch)

    def update(self, valid_loss: float, tcfg, stage_began: bool = False) -> bool:
        """Account for one finished epoch with validation loss ``valid_loss``; lowers ``lr_scale``
        on a plateau (``tcfg.schedule == "plateau"``). Returns whether the loss improved.
        ``stage_began``: the epoch is the first of a ``weight_schedule`` stage, whose weights make
        its losses incomparable with earlier ones, so the best starts anew."""
        self.epoch += 1
        if stage_began:
            self.best_loss = float("inf")
        if valid_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.plateau_bad, self.stop_bad = valid_loss, self.epoch - 1, 0, 0
            return True
        self.plateau_bad += 1
        self.stop_bad += 1
        if tcfg.schedule == "plateau" and self.plateau_bad >= tcfg.plateau_patience:
            self.lr_scale = max(self.lr_scale * tcfg.plateau_factor, tcfg.min_lr / tcfg.lr)
            self.plateau_bad = 0
        return False


_INTS = ("epoch", "best_epoch", "plateau_bad", "stop_bad", "batch")


def _tree(state: TrainState, progress: Progress) -> dict:
    out = {"variables": state.variables, "opt_state": state.opt_state, "ema": state.ema,
           "ema_err": state.ema_err, "step": np.int64(state.step)}
    for f in dataclasses.fields(progress):
        v = getattr(progress, f.name)
        out[f.name] = np.int64(v) if f.name in _INTS else np.float64(v)
    return out


def save_run(path: str | Path, state: TrainState, progress: Progress, partial: dict | None = None) -> None:
    """Checkpoint ``state`` and ``progress`` atomically (``checkpoint.save_checkpoint``), with the
    metric sums of a partly done epoch (``partial``, when ``progress.batch`` > 0)."""
    tree = _tree(state, progress)
    if partial is not None:
        tree["partial"] = partial
    save_checkpoint(path, tree)


def load_run(path: str | Path, state: TrainState, progress: Progress | None = None) -> tuple[TrainState, Progress]:
    """Read a checkpoint written by ``save_run`` (or by the dict-state trainer before it) into the
    structure of the template ``state``; returns the restored (TrainState, Progress) on the device."""
    raw = read_checkpoint(path)
    defaults = _tree(state, Progress())
    raw = {**{k: v for k, v in defaults.items() if k not in ("variables", "opt_state", "ema", "step")}, **raw}
    raw = load_checkpoint(path, jax.device_get(_tree(state, progress or Progress())), raw)
    dev = lambda t: jax.tree_util.tree_map(jnp.asarray, t)  # noqa: E731
    restored = TrainState(variables=dev(raw["variables"]), opt_state=dev(raw["opt_state"]), ema=dev(raw["ema"]),
                          step=jnp.asarray(int(raw["step"]), jnp.int32), ema_err=dev(raw["ema_err"]))
    kw = {f.name: (int if f.name in _INTS else float)(raw[f.name]) for f in dataclasses.fields(Progress)}
    return restored, Progress(**kw)


def epochs_begun(path: str | Path) -> int:
    """Epochs a checkpoint's run has begun: those done, plus the one it stopped inside, if any."""
    raw = read_checkpoint(path)
    return int(raw.get("epoch", 0)) + (1 if int(raw.get("batch", 0)) > 0 else 0)


def partial_epoch(path: str | Path) -> dict | None:
    """The metric sums of the partly done epoch saved in a checkpoint (``save_run(partial=)``), if any."""
    return read_checkpoint(path).get("partial")
