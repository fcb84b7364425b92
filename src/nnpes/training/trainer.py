"""``train(config, run_dir)``: the training loop around one jitted step over padded buckets.

The run state is a ``step.TrainState`` (variables, optimiser state, EMA, step) plus a host
``run_state.Progress`` (epoch, best loss, plateau and early-stopping counters, elapsed time), saved
atomically after every epoch
(``latest.ckpt``; ``best.ckpt`` when validation improves). Data order is a pure function of
(seed, epoch) through the loader's ``set_epoch``, so ``resume=True`` continues exactly: a run
stopped and resumed ends with the same parameters as one that never stopped.

Run directory: ``config.yaml`` (resolved config), ``metrics.csv``, ``train.log``, ``latest.ckpt``,
``best.ckpt``, ``model/`` (``nnpes.load_potential``; its ``card.yaml`` records the data and the
test errors), ``test_metrics.json``, ``parity_test.png``, ``learning_curve.png``, ``result.yaml``
(``result.TrainResult``, written last), ``run.yaml`` (what
``--resume`` checks, ``run_record``), ``.lock`` (locked while a run is in it, ``nnpes.lock``); with
``output.tensorboard`` also ``tensorboard/`` and with ``output.wandb`` ``wandb_run_id``
(``nnpes.training.trackers``: every metrics row also goes there).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from nnpes.config import Config, load_config
from nnpes.errors import TrainingDiverged, TrainingInterrupted
from nnpes.files import atomic_write_text, remove_stale_tmp
from nnpes.graph import GraphLoader, atoms_to_graph, to_device
from nnpes.graph.distances import shortest_distances
from nnpes.lock import lock_run_dir
from nnpes.potential import energy_forces_stress
from nnpes.potential.card import ModelCard, Parent, TrainingData
from nnpes.potential.compiled import model_key
from nnpes.training import parallel
from nnpes.training.data import Splits
from nnpes.training.metrics import EpochSums, epoch_row, plot_learning_curve
from nnpes.training.optim import lr_schedule, make_optimizer
from nnpes.training.result import RESULT, TrainResult
from nnpes.training.run_record import RECORD, RunRecord, check_resume
from nnpes.training.run_state import Progress, epochs_begun, load_run, partial_epoch, save_run
from nnpes.training.step import LossOptions, TrainState, compile_steps, make_train_step
from nnpes.training.stopping import StopRequest, signals_request_stop
from nnpes.training.trackers import open_trackers

LATEST, BEST = "latest.ckpt", "best.ckpt"
clock = time.perf_counter  # the wall clock of max_time (a test may replace it)
MEMBERS = "members"  # a committee run's member runs (nnpes.training.committee)
PARENT = "parent"  # a fine-tune's copy of the potential it starts from (model.init_from)


def make_loader(graphs, tcfg, batch_size: int, shuffle: bool, seed: int) -> GraphLoader:
    """The padded-batch loader of a run (``training.max_nodes``/``max_edges`` caps)."""
    return GraphLoader(graphs, batch_size=batch_size, max_nodes=tcfg.max_nodes, max_edges=tcfg.max_edges,
                       shuffle=shuffle, seed=seed)


def n_batches(loader) -> int:
    """Batches per epoch of ``loader``."""
    try:
        return len(loader)
    except TypeError:
        loader.set_epoch(0)
        return sum(1 for _ in loader)


class _Log:
    def __init__(self, path, quiet=False):
        self.f = open(path, "a")
        self.quiet = quiet

    def __call__(self, msg: str):
        stamp = time.strftime("%H:%M:%S")
        self.f.write(f"[{stamp}] {msg}\n")
        self.f.flush()
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)


def _n_real(graph) -> int:
    """Real graphs in a padded batch (jraph convention: trailing empty graphs and the one before
    them, which owns the padding nodes, are padding)."""
    if np.ndim(graph.n_node) == 2:  # stacked sub-batches (data parallel)
        return parallel.real_graphs(graph)
    n_node = np.asarray(graph.n_node)
    trailing_empty = len(n_node) - len(np.trim_zeros(n_node, "b"))
    return int(len(n_node) - trailing_empty - 1)


@dataclass
class _Run:
    """Everything an epoch needs that does not change during the run."""

    cfg: Config
    run_dir: Path
    pot: object
    splits: Splits
    train_loader: object
    valid_loader: object | None
    steps_per_epoch: int
    put: Callable
    tx: object
    mesh: object | None
    use_stress: bool
    log: Callable
    record: RunRecord
    shortest: dict  # Å per element pair in the train split (nnpes.graph.distances), for the model card
    parent: Parent | None  # a fine-tune's parent, for the model card
    compiled: set = dataclasses.field(default_factory=set)  # (step, batch shape) seen in this process

    def announce_compile(self, which: str, graph) -> None:
        """Say so before a step meets a batch shape it has not been compiled for (a compile takes
        seconds to minutes, and a progress bar's estimate would be wrong meanwhile)."""
        shape = (which, tuple(np.shape(graph.n_node)), tuple(np.shape(graph.senders)))
        if shape in self.compiled:
            return
        self.compiled.add(shape)
        loader = self.train_loader if which == "train" else self.valid_loader
        total = len(getattr(loader, "shapes", ()) or ())
        n = sum(1 for s in self.compiled if s[0] == which)
        of = f" {n} of {total}" if total else ""
        self.log(f"compiling the {which} step for batch shape{of} ({int(np.sum(graph.n_node))} nodes, "
                 f"{int(np.size(graph.senders))} edges)…")


@dataclass
class _Compiles:
    """Compilations of the steps in this process (counted at trace time)."""

    train: int = 0
    eval: int = 0

    def __call__(self, which: str) -> None:
        setattr(self, which, getattr(self, which) + 1)


def open_run_dir(cfg: Config, run_dir, resume: bool, quiet: bool):
    """Lock ``run_dir`` for this run (``nnpes.lock``: a second run there fails at once), check that
    it may take this run (``run_record``), then record the run's config and data there. Nothing in
    the directory is written before the lock is held and the checks pass. Returns (run_dir, log,
    record, lock); the caller releases the lock when the run ends. A run is there when it holds a
    checkpoint or a committee's ``members/``."""
    run_dir = Path(run_dir or cfg.output.run_dir)
    record = RunRecord.of(cfg)
    if resume and not run_dir.exists():  # nothing to lock and nothing is created: there is no run
        check_resume(run_dir, record, False)
    lock = lock_run_dir(run_dir)
    try:
        held = [name for name in (LATEST, MEMBERS) if (run_dir / name).exists()]
        has_checkpoint = bool(held)
        if not resume and has_checkpoint:
            raise FileExistsError(f"{run_dir} already holds a run ({held[0]}); pass --resume or choose another --run-dir")
        if resume:  # a committee's members may stand at different epochs: no schedule change there
            begun = (lambda: epochs_begun(run_dir / LATEST)) if (run_dir / LATEST).exists() else None
            check_resume(run_dir, record, has_checkpoint, begun)
        stale = remove_stale_tmp(run_dir)  # what a kill in the middle of an atomic write left
        log = _Log(run_dir / "train.log", quiet)
        if stale:
            log(f"removed {len(stale)} temporary file(s) left by an interrupted write: {', '.join(p.name for p in stale[:3])}")
        record.save(run_dir)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
    except BaseException:
        lock.release()
        raise
    return run_dir, log, record, lock


def _keep_parent(cfg: Config, run_dir: Path, resuming: bool) -> tuple[Config, Parent | None]:
    """A fine-tune copies its parent (``model.init_from``) into ``run_dir/parent`` when it starts and
    builds from that copy: a resume needs nothing outside the run directory and starts from the same
    parent even if the original was moved or replaced since. Returns the config pointing at the copy,
    and the parent as the model card records it (the path as given, its card)."""
    from nnpes.potential import PARAMS_FILE, load_potential
    from nnpes.potential.build import saved_model_dir

    if cfg.model.init_from is None:
        return cfg, None
    copy = run_dir / PARENT
    if not (resuming and (copy / PARAMS_FILE).is_file()):
        load_potential(saved_model_dir(cfg.model.init_from)).save(copy)
    parent = Parent(cfg.model.init_from, ModelCard.load(copy))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_from=str(copy))), parent


def _setup(cfg: Config, run_dir: Path, log, record: RunRecord, resuming: bool) -> _Run:
    """Data, graphs (built once per structure), potential, loaders, mesh and optimiser."""
    from nnpes.potential import build_potential
    from nnpes.training.data import check_train_labels, load_splits

    cfg, parent = _keep_parent(cfg, run_dir, resuming)
    tcfg, t0 = cfg.training, time.perf_counter()
    splits = load_splits(cfg.data, cfg.model.elements)
    warning = check_train_labels(splits.train)  # no labels at all: an error
    if warning:
        log(f"WARNING: {warning}")
        warnings.warn(warning, stacklevel=3)
    log(f"data: {len(splits.train)} train, {len(splits.valid)} valid, {len(splits.test)} test structures")
    train_graphs = [atoms_to_graph(a, cfg.model.cutoff) for a in splits.train]
    valid_graphs = [atoms_to_graph(a, cfg.model.cutoff) for a in splits.valid]
    pot = build_potential(cfg.model, seed=tcfg.seed, dataset=splits.train, graphs=train_graphs)
    if cfg.data.bootstrap_seed is not None:  # after the statistics: every bootstrap member shares them
        train_graphs = bootstrap_train(train_graphs, cfg.data.bootstrap_seed, log)
    vbs = tcfg.valid_batch_size or tcfg.batch_size
    train_loader = make_loader(train_graphs, tcfg, tcfg.batch_size, True, tcfg.seed)
    valid_loader = make_loader(valid_graphs, tcfg, vbs, False, 0) if valid_graphs else None
    steps_per_epoch = n_batches(train_loader)
    mesh = parallel.training_mesh(tcfg.devices)
    put = (lambda g: to_device(g, pot.dtype)) if mesh is None else (lambda g: parallel.shard_batch(g, mesh, pot.dtype))
    if mesh is not None:  # each global batch → one equal-shape sub-batch per device
        train_loader = parallel.ShardedLoader(
            train_loader, mesh.size, parallel.sub_batch_shape(train_graphs, tcfg.batch_size, mesh.size))
        if valid_loader is not None:
            valid_loader = parallel.ShardedLoader(valid_loader, mesh.size, parallel.sub_batch_shape(valid_graphs, vbs, mesh.size))
        log(f"data parallel over {mesh.size} devices ({jax.process_count()} process(es)): "
            f"{', '.join(str(d) for d in mesh.devices.flat)}")
    log(f"setup {time.perf_counter() - t0:.1f} s; {steps_per_epoch} steps/epoch; model {cfg.model.name} "
        f"({pot.n_parameters} parameters), dtype {cfg.model.dtype}")
    return _Run(cfg, run_dir, pot, splits, train_loader, valid_loader, steps_per_epoch, put,
                make_optimizer(tcfg, steps_per_epoch, pot.params["params"]), mesh, uses_stress(tcfg, train_graphs + valid_graphs), log, record,
                shortest_distances(train_graphs, cfg.model.elements), parent)


def bootstrap_train(graphs: list, seed: int, log) -> list:
    """The train graphs resampled with replacement (``data.bootstrap_seed``); only ever the train
    split, so no validation or test structure can enter."""
    from nnpes.data import bootstrap_indices

    idx = bootstrap_indices(len(graphs), seed)
    log(f"bootstrap (data.bootstrap_seed {seed}): {len(idx)} draws from the {len(graphs)} train structures, "
        f"{len(np.unique(idx))} distinct")
    return [graphs[int(i)] for i in idx]


def uses_stress(tcfg, graphs) -> bool:
    """Whether the steps compute stress: some structure has stress labels and some stage weights it."""
    has_stress = any(float(g.globals["has_stress"][0]) > 0 for g in graphs)
    return bool(has_stress and (tcfg.stress_weight > 0 or any(s.stress_weight for s in tcfg.weight_schedule)))


def _initial_state(run: _Run, resuming: bool) -> tuple[TrainState, Progress]:
    state, progress = TrainState.create(run.pot.params, run.tx), Progress()
    if resuming:
        state, progress = load_run(run.run_dir / LATEST, state)
        run.log(f"resumed from {run.run_dir / LATEST} at epoch {progress.epoch}, step {int(state.step)}")
    if run.mesh is not None:
        state = parallel.replicate(state, run.mesh)
    return state, progress


def train(config, run_dir: str | Path | None = None, *, resume: bool | str = False, overrides=None,
          quiet: bool = False, step_cache: dict | None = None) -> TrainResult:
    """Train from ``config`` (YAML path, dict or ``Config``) into ``run_dir`` (default
    ``output.run_dir``). ``resume``: True continues the run there (an error if there is none, or if
    config or data differ: ``run_record``); ``"auto"`` resumes if there is a run, else starts one.
    Returns a ``TrainResult`` (path of the saved model, stop reason, best validation loss, test
    metrics, number of compiles). With ``training.committee`` K >= 2 it trains a committee instead
    and returns a ``CommitteeResult`` (``nnpes.training.committee.train_committee``).
    ``step_cache``: a dict that runs in this process share their compiled steps through (they
    compile once per model, data size and training settings other than the seed)."""
    cfg: Config = config if isinstance(config, Config) else load_config(config, overrides)
    tcfg = cfg.training
    if resume == "auto":  # resume a run that is there, else start one (notebooks re-run top to bottom)
        where = Path(run_dir or cfg.output.run_dir)
        resume = any((where / x).exists() for x in (LATEST, RECORD, MEMBERS))
    if tcfg.committee > 1:
        from nnpes.training.committee import train_committee

        return train_committee(cfg, run_dir, resume=resume, quiet=quiet)
    if tcfg.devices != 1:  # a multi-process run must join before JAX touches a device
        parallel.maybe_initialize_distributed()
    run_dir, log, record, lock = open_run_dir(cfg, run_dir, resume, quiet)
    with lock:  # held until the run ends, however it ends
        resuming = bool(resume) and (run_dir / LATEST).exists()
        run = _setup(cfg, run_dir, log, record, resuming)
        state, progress = _initial_state(run, resuming)
        compiles = _Compiles()
        train_step, eval_step = _compiled_steps(run, compiles, step_cache)
        trackers = open_trackers(cfg, run_dir, resume_epoch=progress.epoch, log=log)
        _explain_log(run)
        stop = StopRequest(clock)
        try:
            with signals_request_stop(stop):
                state, stop_reason = _epoch_loop(run, train_step, eval_step, state, progress, trackers, stop)
        finally:
            trackers.close()
        n_train, n_valid = (len(getattr(x, "shapes", ())) if x is not None else 0 for x in (run.train_loader, run.valid_loader))
        log(f"stopped ({stop_reason}) after {_epochs_done(progress.epoch)}; compiles this process: train step "
            f"{compiles.train}, eval step {compiles.eval} (padded shapes: train {n_train}, valid {n_valid})")
        if stop.signal is not None:  # the scheduler's grace time is short: no model, test set or plots
            raise TrainingInterrupted(f"stopped by {stop.signal.name}; {run_dir / LATEST} saved, --resume goes on "
                                      "from the next batch", int(stop.signal))
        return _finish(run, state, progress, stop_reason, dataclasses.asdict(compiles), n_train + n_valid)


def finished_run(run_dir, tcfg) -> TrainResult | None:
    """The result (``result.yaml``) of the run in ``run_dir`` when it has ended and ``tcfg``'s stop
    criteria would not continue it (a resume with a larger ``max_epochs`` or ``max_time`` would);
    None otherwise."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULT).is_file() or not (run_dir / "model").is_dir():
        return None
    r = TrainResult.load(run_dir)
    done = (r.epochs >= tcfg.max_epochs
            or (tcfg.max_time is not None and r.elapsed_s >= tcfg.max_time)
            or (r.stop_reason == "early_stopping" and tcfg.early_stopping_patience is not None))
    return r if done else None


def _epoch_loop(run: _Run, train_step, eval_step, state: TrainState, progress: Progress, trackers,
                stop: StopRequest):
    """Epochs until a stop criterion; ``progress`` is updated in place. Returns (state, stop reason).

    ``training.max_time`` bounds the wall time of the epochs (steps, their compilation, validation,
    checkpoints; not the setup before them nor the final test evaluation), summed over resumes. It,
    and a signal (``stop``, ``training.stopping``), is checked after every step: a stop inside an
    epoch saves ``latest`` with the batches done, and ``--resume`` goes on from the next batch exactly."""
    tcfg, run_dir = run.cfg.training, run.run_dir
    wall0 = clock() - progress.elapsed
    stop.deadline = None if tcfg.max_time is None else wall0 + tcfg.max_time
    partial = partial_epoch(run_dir / LATEST) if progress.batch else None
    while progress.epoch < tcfg.max_epochs:
        if why := stop.reason():
            return state, why
        epoch = progress.epoch
        began = tcfg.stage_begins(epoch)
        if began and not progress.batch:
            run.log(f"epoch {epoch}: a training.weight_schedule stage begins; its loss is weighted anew, so the "
                    "best validation loss starts anew (the saved model comes from this stage on)")
        weights = {k: jnp.asarray(v, run.pot.dtype) for k, v in tcfg.loss_weights(epoch).items()}
        lr_scale = jnp.asarray(progress.lr_scale * tcfg.lr_factor(epoch), run.pot.dtype)
        state, sums, lr, done = _train_epoch(run, train_step, state, weights, lr_scale, epoch, start=progress.batch,
                                             sums=EpochSums.from_tree(partial), stop=stop)
        partial = None
        progress.elapsed = clock() - wall0
        if done < run.steps_per_epoch:  # stopped inside the epoch
            progress.batch = done
            save_run(run_dir / LATEST, state, progress, partial=sums.to_tree())
            why = stop.reason()
            run.log(f"{'max_time reached' if why == 'max_time' else why + ' received'} in epoch {epoch} after "
                    f"{done} of {run.steps_per_epoch} batches; saved, --resume goes on from the next batch")
            return state, why
        progress.batch = 0
        train_m = sums.reduce()
        valid_m = _validate(run, eval_step, state, weights) if run.valid_loader is not None else dict(train_m)
        improved = progress.update(valid_m["loss"], tcfg, stage_began=began)
        progress.elapsed = clock() - wall0
        # The epoch's metrics row first, then best, then latest: a kill before latest is saved
        # leaves latest at the previous epoch, which resumes, drops the rows written since (CSVLog)
        # and redoes this epoch identically; a kill after it loses nothing.
        _report_epoch(run, trackers, epoch, int(state.step), progress, train_m, valid_m, lr, improved)
        if improved:
            save_run(run_dir / BEST, state, progress)
        save_run(run_dir / LATEST, state, progress)
        if tcfg.early_stopping_patience is not None and progress.stop_bad >= tcfg.early_stopping_patience:
            return state, "early_stopping"
    return state, "max_epochs"


def _epochs_done(n: int) -> str:
    """"200 epochs (last epoch 199)": epoch lines count from 0, ``Progress.epoch`` counts epochs done."""
    return f"{n} epoch{'s' if n != 1 else ''}" + (f" (last epoch {n - 1})" if n else "")


def _explain_log(run: _Run) -> None:
    """Two lines at the start of training that say what the epoch lines show."""
    tcfg, stress = run.cfg.training, run.use_stress
    weights = f"w_E {tcfg.energy_weight:g}, w_F {tcfg.forces_weight:g}" + (f", w_S {tcfg.stress_weight:g}" if stress else "")
    if tcfg.weight_schedule:
        weights += ", changed by training.weight_schedule"
    err = "2·Huber" if tcfg.loss == "huber" else "squared"
    valid = "the validation set" if run.valid_loader is not None else "the training set (there is no validation set)"
    params = "EMA parameters" if tcfg.ema_decay is not None else "current parameters"
    of = ["energy per atom (eV/atom)" if tcfg.energy_per_atom else "energy (eV)", "force components (eV/Å)"]
    if stress:
        of.append("stress components (eV/Å³)")
    run.log(f"epoch lines: loss train / valid = w_E·L_E + w_F·L_F{' + w_S·L_S' if stress else ''} ({weights}); "
            f"L = mean {err} error of {', '.join(of[:-1])} and {of[-1]}; valid = {valid}, with the {params}")
    run.log(f"valid E, F{', S' if stress else ''} = validation MAE (meV/atom, meV/Å{', meV/Å³' if stress else ''}); "
            "lr = learning rate of the last step; s = wall time; * = best validation loss so far, best.ckpt saved; "
            "metrics.csv has train and valid MAE and RMSE and each loss term")


class _TraceSink:
    """``on_trace`` of shared steps: counts each compile into the ``_Compiles`` of the run using them."""

    target: _Compiles | None = None

    def __call__(self, which: str) -> None:
        if self.target is not None:
            self.target(which)


def _compiled_steps(run: _Run, compiles: _Compiles, step_cache: dict | None = None):
    """The jitted train and eval steps of this run (``step.make_train_step``). With ``step_cache``
    (a committee's members share one) a run of the same model, data size and training settings but
    another seed reuses the steps an earlier run compiled."""
    tcfg, stress, mesh = run.cfg.training, run.use_stress, run.mesh
    module, table, tx = run.pot.module, run.pot.table, run.tx

    def make():
        sink = _TraceSink()
        train_step, eval_step = make_train_step(
            lambda v, g: energy_forces_stress(module, table, v, g, stress), tx, LossOptions.of(tcfg),
            schedule=lr_schedule(tcfg, run.steps_per_epoch), ema_decay=0.0 if tcfg.ema_decay is None else tcfg.ema_decay,
            mesh=mesh, on_trace=sink)
        return sink, compile_steps(train_step, eval_step, mesh=mesh, precision=tcfg.matmul_precision)

    if step_cache is None or mesh is not None:
        sink, steps = make()
    else:  # everything the steps close over, bar the seed (it only sets the initial parameters and data order)
        key = (model_key(module, run.cfg.model.elements), run.cfg.model.dtype, run.steps_per_epoch, stress,
               repr(dataclasses.replace(tcfg, seed=0)))
        if key not in step_cache:
            step_cache[key] = make()
        sink, steps = step_cache[key]
    sink.target = compiles
    return steps


def _train_epoch(run: _Run, train_step, state: TrainState, weights, lr_scale, epoch: int, *, start: int = 0,
                 sums: EpochSums | None = None, stop: StopRequest):
    """The training batches of ``epoch`` from batch ``start`` on (``sums``: those before it), until
    the end or the first step after which ``stop`` has a reason. Returns (state, sums, last
    learning rate, batches of the epoch done)."""
    run.train_loader.set_epoch(epoch)
    batches = iter(run.train_loader)
    progress = sys.stderr.isatty() if run.cfg.training.progress is None else run.cfg.training.progress
    bar = None
    if progress:
        from tqdm import tqdm

        batches = bar = tqdm(batches, total=run.steps_per_epoch, initial=start, desc=f"epoch {epoch}", leave=False)
    sums, lr, done = sums or EpochSums(), math.nan, start
    for i, graph in enumerate(batches):
        if i < start:  # done before a stop inside this epoch: the order is the same, skip them
            continue
        run.announce_compile("train", graph)
        state, m = train_step(state, run.put(graph), weights, lr_scale)
        loss, lr, done = sums.add(m, _n_real(graph)), m.lr, i + 1
        if not math.isfinite(loss):
            raise TrainingDiverged(f"epoch {epoch}, step {int(state.step)}: training loss is {loss}; lower training.lr "
                                   f"(or check the labels of {run.cfg.data.train_files[0]})")
        if done < run.steps_per_epoch and stop.reason():
            break
    if bar is not None:
        bar.close()
    return state, sums, float(lr), done


def _validate(run: _Run, eval_step, state: TrainState, weights) -> dict:
    """Validation metrics with the EMA parameters."""
    sums = EpochSums()
    for graph in run.valid_loader:
        run.announce_compile("eval", graph)
        sums.add(eval_step(state, run.put(graph), weights), _n_real(graph))
    return sums.reduce()


def _report_epoch(run: _Run, trackers, epoch, step, progress: Progress, train_m, valid_m, lr, improved) -> None:
    trackers.write(epoch_row(epoch, step, progress.elapsed, lr, train_m, valid_m))
    stress = f"  S {valid_m['s_mae_meV_A3']:.3g} meV/Å³" if run.use_stress else ""
    run.log(f"epoch {epoch:4d}  loss {train_m['loss']:.4g} / {valid_m['loss']:.4g}  "
            f"valid E {valid_m['e_mae_meV_atom']:.3g} meV/atom  F {valid_m['f_mae_meV_A']:.3g} meV/Å{stress}  "
            f"lr {lr:.3g}  {progress.elapsed:.0f} s" + ("  *" if improved else ""))


def training_data(run: _Run) -> TrainingData:
    """The model card's record of a run's data: the files of ``run.yaml`` (with their sha256), the
    number of structures in each split and the shortest distance of each element pair in training."""
    return TrainingData(run.record.files, run.splits.sizes(),
                        run.cfg.data.energy_unit, shortest_distances=run.shortest)


def _finish(run: _Run, state: TrainState, progress: Progress, stop_reason: str, compiles: dict,
            n_buckets: int) -> TrainResult:
    """Save the best EMA parameters as the model (with its card: data, then test errors), evaluate
    on the test set, write plots."""
    from nnpes.training.evaluate import evaluate, format_metrics

    cfg, run_dir, splits, log = run.cfg, run.run_dir, run.splits, run.log
    best_state, best = state, progress
    if (run_dir / BEST).exists():
        best_state, best = load_run(run_dir / BEST, jax.device_get(state))
    model = run.pot.replace(jax.tree_util.tree_map(jnp.asarray, {**best_state.variables, "params": best_state.ema}))
    card = ModelCard.of(model, data=training_data(run), parent=run.parent)
    model_dir = model.save(run_dir / "model", card=card)
    log(f"model (best epoch {best.best_epoch}, EMA parameters) saved to {model_dir}")
    if cfg.output.plots and (run_dir / "metrics.csv").exists():
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
    name, test = splits.held_out()
    m = None
    if test:
        m = evaluate(model, test, out=run_dir / f"{name}_metrics.json",
                     plot=(run_dir / f"parity_{name}.png") if cfg.output.plots else None,
                     title=f"{cfg.model.name}, {name} set ({len(test)} structures)")
        card.test_split, card.test_metrics = name, m
        card.save(model_dir)
        log(f"{name} set ({len(test)} structures):\n" + format_metrics(m))
    result = TrainResult(run_dir=str(run_dir), model=str(model_dir), stop_reason=stop_reason, epochs=progress.epoch,
                         steps=int(state.step), best_epoch=best.best_epoch, best_valid_loss=best.best_loss,
                         elapsed_s=progress.elapsed, n_compiles=compiles, n_padded_shapes=n_buckets, test_metrics=m)
    result.save()
    return result
