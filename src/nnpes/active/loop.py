"""The active-learning loop as a crash-safe state machine.

    init → [train → explore → select → label] × iterations → done

Every stage writes its artefacts atomically under ``run_dir/iter_NNN/`` and then the loop state
(``state.json``, atomic replace + fsync). Oracle results go one by one into the append-only
``labels.jsonl`` (``LabelStore``), fsynced before anything uses them, keyed by request id. After a
crash at any point, ``run(..., resume=True)`` restarts the stage recorded in the state: a finished
stage is never redone, an interrupted one is redone from its inputs, and labelling skips every key
already in the store, so no finished oracle call is repeated and no label is lost.

The run directory is locked while a loop runs in it (``nnpes.lock``): a second ``nnpes
active-learn`` on the same directory fails at once instead of interleaving its labels and state.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from ase import Atoms

from nnpes.active.ensemble import Ensemble, load_ensemble
from nnpes.active.explore import explore
from nnpes.oracle import LabelStore, label_into_store, make_executor, make_oracle
from nnpes.active.selection import FAILED, NAMES, classify, fractions, select, structure_descriptor
from nnpes.files import atomic_write_text, remove_stale_tmp, yaml_safe
from nnpes.lock import lock_run_dir
from nnpes.config.active import ExploreConfig, load_config
from nnpes.data import read_structures

STAGES = ("init", "train", "explore", "select", "label", "done")
STATE_FILE = "state.json"
LABELS_FILE = "labels.jsonl"


# ---- small atomic file helpers -----------------------------------------------------------------


def _write_frames(path: Path, frames: list[Atoms]) -> None:
    import ase.io

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    clean = []
    for a in frames:
        b = Atoms(a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc)
        b.info.update({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in a.info.items()})
        clean.append(b)
    ase.io.write(tmp, clean, format="extxyz")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_frames(path: Path) -> list[Atoms]:
    import ase.io

    frames = ase.io.read(path, index=":", format="extxyz") if path.stat().st_size else []
    for a in frames:
        if isinstance(a.info.get("al_cv"), str):
            a.info["al_cv"] = json.loads(a.info["al_cv"])
    return frames


def _is_valid(key: str, fraction: float) -> bool:
    """Validation membership from a hash of the label key: stable across resumes and iterations.
    (A cryptographic hash: crc32 of short similar keys is far from uniform.)"""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12 < fraction


# ---- the loop ----------------------------------------------------------------------------------


class ActiveLearning:
    """One run directory. ``hooks``: ``{"stage": fn(stage, iteration, when)}`` called with
    when = "done" (artefacts written, state not yet) and "committed" (state written), and
    ``{"label": fn(key)}`` after each stored oracle result. Tests raise from them to simulate a
    crash at every boundary."""

    def __init__(self, config, run_dir, *, oracle: Callable | None = None, executor=None,
                 hooks: dict | None = None, log: Callable | None = print):
        self.cfg = load_config(config)
        self.run_dir = Path(run_dir)
        # Before anything in the directory is read or written: a second loop there fails at once.
        self._lock = lock_run_dir(self.run_dir)
        try:
            self.oracle = oracle if oracle is not None else make_oracle(self.cfg.oracle)
            self._executor = executor
            self.hooks = hooks or {}
            self.log = log or (lambda *a: None)
            remove_stale_tmp(self.run_dir)  # what a kill in the middle of an atomic write left
            self.store = LabelStore(self.run_dir / LABELS_FILE)
            self.state = self._load_state()
            self._initial = None
        except BaseException:
            self.close()
            raise

    # state ----------------------------------------------------------------------------------

    def _load_state(self) -> dict:
        path = self.run_dir / STATE_FILE
        if path.exists():
            return json.loads(path.read_text())
        return {"iteration": 0, "stage": "init", "history": []}

    def _commit(self, stage: str) -> None:
        self._hook(self.state["stage"], "done")
        self.state["stage"] = stage
        atomic_write_text(self.run_dir / STATE_FILE, json.dumps(self.state, indent=1))
        self._hook(stage, "committed")

    def _hook(self, stage, when):
        fn = self.hooks.get("stage")
        if fn is not None:
            fn(stage, self.state["iteration"], when)

    def iter_dir(self, i: int | None = None) -> Path:
        return self.run_dir / f"iter_{self.state['iteration'] if i is None else i:03d}"

    # data -----------------------------------------------------------------------------------

    def initial_structures(self) -> list[Atoms]:
        if self._initial is None:
            self._initial = read_structures(self.cfg.data.initial) if self.cfg.data.initial else []
            for k, a in enumerate(self._initial):
                a.info["al_key"] = f"file-{k}"
        return self._initial

    def starts(self) -> list[Atoms]:
        import ase.io

        if self.cfg.data.starts:
            frames = ase.io.read(self.cfg.data.starts, index=":")
        else:
            frames = self.initial_structures()
        return [Atoms(a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc) for a in frames[: self.cfg.data.max_starts]]

    def labelled(self) -> tuple[list[Atoms], list[Atoms]]:
        """(train, valid) from the initial file plus every successful label in the store, sorted by
        key: the order in which the oracle calls completed (a process pool's, or a resume's) does
        not change what is trained."""
        structures = self.initial_structures() + sorted(self.store.atoms("ok"), key=lambda a: a.info["al_key"])
        frac = self.cfg.data.valid_fraction
        valid = [a for a in structures if _is_valid(a.info["al_key"], frac)]
        train = [a for a in structures if not _is_valid(a.info["al_key"], frac)]
        if not train:
            raise ValueError("active learning: no labelled training structures (all initial oracle calls failed?)")
        return train, valid

    def _executor_for_labels(self):
        """(executor, its factory or None): the one given to the loop, else a new one from the
        config's ``executor`` section (rebuilt when its workers die)."""
        if self._executor is not None:
            return self._executor, None
        e = self.cfg.executor
        factory = lambda: make_executor(e.kind, e.workers, e.address)  # noqa: E731
        return factory(), factory

    def _label(self, structures, keys, meta=None) -> dict:
        budget = self.cfg.stop.max_oracle_calls
        done = self.store.keys()
        if budget is not None:
            left = max(budget - len(self.store), 0)
            todo = [k for k in keys if k not in done][:left]
            allowed = set(todo) | done
            picked = [(a, k, m) for a, k, m in zip(structures, keys, meta or [{}] * len(keys)) if k in allowed]
            structures, keys, meta = [p[0] for p in picked], [p[1] for p in picked], [p[2] for p in picked]
        executor, factory = self._executor_for_labels()
        try:
            return label_into_store(structures, keys, self.oracle, self.store, executor, on_result=self.hooks.get("label"),
                                    meta=meta, rebuild=factory)
        finally:
            if factory is not None:
                executor.shutdown(wait=True)

    # stages ---------------------------------------------------------------------------------

    def stage_init(self) -> str:
        n = self.cfg.data.initial_per_start
        if n > 0:
            rng = np.random.default_rng(self.cfg.seed)
            structures, keys = [], []
            for s, start in enumerate(self.starts()):
                for j in range(n):
                    a = start.copy()
                    a.positions += rng.normal(scale=self.cfg.data.initial_rattle, size=a.positions.shape)
                    structures.append(a)
                    keys.append(f"init-{s}-{j}")
            counts = self._label(structures, keys, [{"iteration": -1}] * len(keys))
            self.log(f"initial labels: {counts}")
        return "train"

    def stage_train(self) -> str:
        c, i = self.cfg.committee, self.state["iteration"]
        train, valid = self.labelled()
        prev = self.iter_dir(i - 1) / "ensemble"
        warm = c.warm_start and i > 0 and prev.exists()
        if warm:
            ens = load_ensemble(prev)
        else:
            ens = Ensemble.build(self.cfg.model, c.size, seed=self.cfg.seed, dataset=train, nu=c.nu)
        fit = c.fit_config(warm, seed=self.cfg.seed + 1000 * i)
        t0 = time.perf_counter()
        ens = ens.fit(train, fit)
        metrics = {"n_train": len(train), "n_valid": len(valid), "train_seconds": time.perf_counter() - t0,
                   "warm_start": warm}
        if valid:
            if c.calibrate:
                metrics["std_scale"] = ens.calibrate(valid)
            metrics["valid"] = ens.errors(valid)
        if self.cfg.data.test:
            metrics["test"] = ens.errors(read_structures(self.cfg.data.test))
        ens.save(self.iter_dir() / "ensemble")
        atomic_write_text(self.iter_dir() / "train.json", json.dumps(metrics, indent=1))
        self.log(f"iteration {i}: trained on {len(train)} labels ({'warm' if warm else 'cold'} start) {metrics.get('valid', '')}")
        return "explore"

    def stage_explore(self) -> str:
        i = self.state["iteration"]
        ens = load_ensemble(self.iter_dir() / "ensemble")
        ecfg = ExploreConfig(**{**asdict(self.cfg.explore), "stop_above": self.cfg.select.hi})
        frames, trajs = explore(ens, self.starts(), ecfg, seed=self.cfg.seed + 7919 * (i + 1))
        _write_frames(self.iter_dir() / "pool.extxyz", frames)
        atomic_write_text(self.iter_dir() / "trajectories.json", json.dumps([asdict(t) for t in trajs], indent=1))
        self.log(f"iteration {i}: explored {len(trajs)} trajectories, {len(frames)} frames, "
                 f"{sum(t.stopped for t in trajs)} stopped at the upper trust level")
        return "select"

    def stage_select(self) -> str:
        s, i = self.cfg.select, self.state["iteration"]
        pool = _read_frames(self.iter_dir() / "pool.extxyz")
        eps = np.array([a.info["al_eps"] for a in pool], np.float64)
        codes = classify(eps, s.lo, s.hi) if len(pool) else np.zeros(0, int)
        frac = fractions(codes)
        elements = self.cfg.model.elements
        cutoff = self.cfg.model.cutoff
        desc = np.stack([structure_descriptor(a, elements, cutoff) for a in pool]) if s.method == "fps" and len(pool) else None
        cv = np.array([a.info["al_cv"] for a in pool]) if s.method == "cv_bins" and len(pool) else None
        chosen = select(eps, s.lo, s.hi, s.max_per_iteration, method=s.method, descriptors=desc, cv=cv,
                        n_bins=s.n_bins, seed=self.cfg.seed + i) if len(pool) else np.zeros(0, int)
        fallback = False
        if len(chosen) == 0 and s.fallback_to_failed and np.any(codes == FAILED):
            failed = np.flatnonzero(codes == FAILED)
            chosen = failed[np.argsort(eps[failed], kind="stable")[: s.max_per_iteration]]
            fallback = True
        converged = len(pool) > 0 and frac["accurate"] >= self.cfg.stop.accurate_fraction
        sel = {"indices": [int(k) for k in chosen], "keys": [f"it{i}-p{int(k)}" for k in chosen],
               "counts": {NAMES[c]: int(np.sum(codes == c)) for c in NAMES}, "fractions": frac,
               "n_pool": len(pool), "converged": bool(converged), "fallback_to_failed": fallback}
        atomic_write_text(self.iter_dir() / "selection.json", json.dumps(sel, indent=1))
        self.log(f"iteration {i}: accurate {frac['accurate']:.2f} candidate {frac['candidate']:.2f} "
                 f"failed {frac['failed']:.2f}; selected {len(chosen)}" + (" (no candidates: lowest-ε failed frames)" if fallback else ""))
        return "label"

    def stage_label(self) -> str:
        i = self.state["iteration"]
        sel = json.loads((self.iter_dir() / "selection.json").read_text())
        pool = _read_frames(self.iter_dir() / "pool.extxyz") if sel["indices"] else []
        structures = [pool[k] for k in sel["indices"]]
        meta = [{"iteration": i, "al_eps": float(pool[k].info["al_eps"])} for k in sel["indices"]]
        counts = self._label(structures, sel["keys"], meta) if structures else {"submitted": 0, "ok": 0, "failed": 0}
        summary = self._summary(sel, counts)
        self.state["history"].append(summary)
        self.log(f"iteration {i}: {json.dumps(summary)}")
        stop = self.cfg.stop
        budget_spent = stop.max_oracle_calls is not None and len(self.store) >= stop.max_oracle_calls
        if sel["converged"] or budget_spent or i + 1 >= stop.max_iterations:
            self.state["stop_reason"] = ("accurate fraction reached" if sel["converged"] else
                                         "oracle budget spent" if budget_spent else
                                         "max_iterations reached")
            return "done"
        self.state["iteration"] = i + 1
        return "train"

    def _summary(self, sel, counts) -> dict:
        i = self.state["iteration"]
        train = json.loads((self.iter_dir() / "train.json").read_text())
        records = self.store.records
        return {
            "iteration": i, "labels": len(self.initial_structures()) + sum(r["status"] == "ok" for r in records),
            "oracle_calls": len(records), "oracle_failures": sum(r["status"] == "failed" for r in records),
            "fractions": sel["fractions"], "n_pool": sel["n_pool"], "selected": len(sel["indices"]),
            "labelled_this_iteration": counts, "valid": train.get("valid"), "test": train.get("test"),
        }

    # driver ---------------------------------------------------------------------------------

    def run(self) -> dict:
        """Run the stages until done; the run directory's lock is released at the end, however
        it ends."""
        stages = {"init": self.stage_init, "train": self.stage_train, "explore": self.stage_explore,
                  "select": self.stage_select, "label": self.stage_label}
        try:
            while self.state["stage"] != "done":
                stage = self.state["stage"]
                if stage not in stages:
                    raise ValueError(f"{self.run_dir / STATE_FILE}: unknown stage {stage!r}")
                nxt = stages[stage]()
                self._commit(nxt)
            return self.state
        finally:
            self.close()

    def close(self) -> None:
        """Release the run directory (``run`` does so when it ends)."""
        self._lock.release()


def run(config, run_dir, *, resume: bool = False, **kwargs) -> dict:
    """Run (or, with ``resume``, continue) an active-learning loop in ``run_dir``; returns the
    final state with the per-iteration ``history``."""
    run_dir = Path(run_dir)
    with lock_run_dir(run_dir):  # before anything is checked or written (ActiveLearning takes it again)
        if (run_dir / STATE_FILE).exists() and not resume:
            raise ValueError(f"{str(run_dir)!r} already holds an active-learning run; pass --resume to continue it")
        cfg = load_config(config)
        for key in ("initial", "starts", "test"):
            path = getattr(cfg.data, key)
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"data.{key}: {path!r} not found")
        # Keep the config next to the run so a resume uses the same settings.
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.exists():
            atomic_write_text(cfg_path, yaml.safe_dump(yaml_safe(cfg.to_dict()), sort_keys=False))
        return ActiveLearning(cfg, run_dir, **kwargs).run()

