"""``nnpes train CONFIG --committee K``: K members, each a complete single-model run of
``nnpes.training.train`` (same loss, stress, validation, EMA, checkpoints), then one committee.

Member k is the config with ``training.seed + k`` (parameter init and data order); with
``training.committee_mode: bootstrap`` also ``data.bootstrap_seed = training.seed + k``, a resample
of the train split alone (validation and test frames never enter; the normalisation comes from the
whole train split, so the members share it). The members' models are stacked into an
``nnpes.active.Ensemble``, its ``std_scale`` is calibrated on the validation split
(``Ensemble.calibrate``: the per-atom force standard deviation matched to the committee-mean force
error), and it is evaluated on the test split with its uncertainty (``evaluate.uncertainty_metrics``).

Run directory:
    .lock                     held while the committee trains (``nnpes.lock``; members lock their own)
    config.yaml, run.yaml     the committee's resolved config and data (what ``--resume`` checks)
    train.log                 the committee's log (each member also has its own)
    members/k/                member k: a single-model run directory (its own model/, checkpoints, ...)
    committee/                ``Ensemble.save``: load with ``nnpes.active.ensemble.load_ensemble``
    test_metrics.json         committee-mean errors and ``uncertainty`` (parity_test.png with plots)
    result.yaml               the summary ``train`` returns

``resume=True`` skips members that have finished (``trainer.finished_run``), resumes the one that
was interrupted from its ``latest.ckpt`` and starts those not begun; the committee is then assembled
again. Python's ``Ensemble.fit`` trains all members at once in one vmapped step instead (for active
learning: fast, without stress, validation or checkpoints).
"""

from __future__ import annotations

import json
from pathlib import Path

from nnpes.config import Config, load_config
from nnpes.files import atomic_write_text
from nnpes.training.result import CommitteeResult
from nnpes.training.trainer import LATEST, MEMBERS, finished_run, open_run_dir, train

COMMITTEE = "committee"


def member_config(cfg: Config, k: int) -> Config:
    """Member ``k``'s single-model config: ``training.seed + k`` and, for bootstrap, the same number
    as ``data.bootstrap_seed``; everything else as ``cfg``."""
    raw = cfg.to_dict()
    training = raw.setdefault("training", {}) or {}
    raw["training"] = training
    for key in ("committee", "committee_mode"):
        training.pop(key, None)
    training["seed"] = cfg.training.seed + k
    if cfg.training.committee_mode == "bootstrap":
        raw["data"]["bootstrap_seed"] = cfg.training.seed + k
    return load_config(raw)


def train_committee(cfg: Config, run_dir=None, *, resume: bool = False, quiet: bool = False) -> CommitteeResult:
    """Train ``cfg.training.committee`` members into ``run_dir/members/k``, then save the calibrated
    committee in ``run_dir/committee`` and evaluate it. Returns a ``CommitteeResult`` (``model`` is
    the committee directory; ``members`` the members' model directories)."""
    size = cfg.training.committee
    if size < 2:
        raise ValueError(f"training.committee: a committee needs at least 2 members, got {size}")
    run_dir, log, _, lock = open_run_dir(cfg, run_dir, resume, quiet)
    with lock:  # the committee's directory; each member's run locks its own RUN/members/k
        return _train_members(cfg, run_dir, quiet, log)


def _train_members(cfg: Config, run_dir: Path, quiet: bool, log) -> CommitteeResult:
    size, mode = cfg.training.committee, cfg.training.committee_mode
    log(f"committee of {size} members (training.seed {cfg.training.seed}..{cfg.training.seed + size - 1}"
        + (", each on a bootstrap resample of the train split" if mode == "bootstrap" else "") + f") in {run_dir / MEMBERS}")
    members, step_cache = [], {}  # the members share their compiled steps
    for k in range(size):
        member_dir = run_dir / MEMBERS / str(k)
        mcfg = member_config(cfg, k)
        done = finished_run(member_dir, mcfg.training)
        if done is not None:
            log(f"member {k}: finished before ({done.stop_reason} after {done.epochs} epochs), not retrained")
        else:
            again = (member_dir / LATEST).exists()
            log(f"member {k}: {'resuming' if again else 'training'} (training.seed {mcfg.training.seed}"
                + (f", data.bootstrap_seed {mcfg.data.bootstrap_seed}" if mode == "bootstrap" else "")
                + f") in {member_dir}")
            train(mcfg, member_dir, resume=again, quiet=quiet, step_cache=step_cache)
        members.append(member_dir / "model")
    return _assemble(cfg, run_dir, members, log)


def _assemble(cfg: Config, run_dir: Path, members: list[Path], log) -> CommitteeResult:
    """The members' models as one committee: calibrated on the validation split, saved, evaluated
    on the test split (the validation split when there is none)."""
    from nnpes.active.ensemble import Ensemble
    from nnpes.potential import load_potential
    from nnpes.training.data import load_splits
    from nnpes.training.evaluate import evaluate, format_metrics

    ens = Ensemble.from_potentials([load_potential(m) for m in members])
    splits = load_splits(cfg.data, cfg.model.elements)  # the members' split (bootstrap resamples only train)
    calibrated_on = None
    if splits.valid:
        ens.calibrate(splits.valid)
        calibrated_on = {"split": "valid", "n_structures": len(splits.valid)}
        log(f"uncertainty calibrated on the validation split ({len(splits.valid)} structures): "
            f"std_scale {ens.std_scale:.4g} (force standard deviation matched to the committee-mean force error)")
    else:
        log("no validation split: std_scale left at 1 (the uncertainty is not calibrated)")
    committee_dir = ens.save(run_dir / COMMITTEE)
    log(f"committee of {ens.size} members saved to {committee_dir}")
    m = None
    name, test = splits.held_out()
    if test:
        m = evaluate(ens, test, plot=(run_dir / f"parity_{name}.png") if cfg.output.plots else None,
                     title=f"{cfg.model.name} committee of {ens.size}, {name} set ({len(test)} structures)")
        m["uncertainty"]["calibrated_on"] = dict(calibrated_on) if calibrated_on else None
        atomic_write_text(run_dir / f"{name}_metrics.json", json.dumps(m, indent=2))
        log(f"{name} set ({len(test)} structures), committee mean:\n" + format_metrics(m))
    result = CommitteeResult(run_dir=str(run_dir), model=str(committee_dir), committee=str(committee_dir),
                             members=[str(d) for d in members], std_scale=float(ens.std_scale),
                             calibrated_on=calibrated_on, test_metrics=m)
    result.save()
    return result

