"""``train(config, run_dir)``: the training loop around one jitted step over padded buckets.

The whole run state (variables, optimiser state, EMA, step, epoch, best loss, plateau and
early-stopping counters, elapsed time) is one PyTree saved atomically after every epoch
(``latest.ckpt``; ``best.ckpt`` when validation improves). Data order is a pure function of
(seed, epoch) through the loader's ``set_epoch``, so ``resume=True`` continues exactly: a run
stopped and resumed ends with the same parameters as one that never stopped.

Run directory: ``config.yaml`` (resolved config), ``metrics.csv``, ``train.log``, ``latest.ckpt``,
``best.ckpt``, ``model/`` (``nnpes.load_potential``), ``test_metrics.json``, ``parity_test.png``,
``learning_curve.png``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml

from nnpes.config import Config, load_config
from nnpes.graph import atoms_to_graph
from nnpes.training import parallel
from nnpes.training.checkpoint import load_checkpoint, save_checkpoint
from nnpes.training.loss import error_sums, total_loss
from nnpes.training.metrics import CSVLog, add_sums, plot_learning_curve, reduce_sums
from nnpes.training.optim import ema_update, lr_schedule, make_optimizer

LATEST, BEST = "latest.ckpt", "best.ckpt"


def _loader(graphs, tcfg, batch_size, shuffle, seed):
    from nnpes.graph import GraphLoader

    return GraphLoader(graphs, batch_size=batch_size, max_nodes=tcfg.max_nodes, max_edges=tcfg.max_edges,
                       shuffle=shuffle, seed=seed)


def _to_device(graph, dtype):
    from nnpes.graph import to_device

    return to_device(graph, dtype)


def _n_batches(loader) -> int:
    try:
        return len(loader)
    except TypeError:
        loader.set_epoch(0)
        return sum(1 for _ in loader)


def loss_weights(tcfg, epoch: int) -> dict:
    """w_E, w_F, w_S in force at ``epoch`` (the last weight_schedule stage that has started)."""
    w = {"energy": tcfg.energy_weight, "forces": tcfg.forces_weight, "stress": tcfg.stress_weight}
    for stage in tcfg.weight_schedule:
        if epoch >= stage.epoch:
            for k in ("energy", "forces", "stress"):
                v = getattr(stage, f"{k}_weight")
                if v is not None:
                    w[k] = v
    return w


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


def _make_steps(pot, tx, tcfg, use_stress: bool, counter: dict, schedule, mesh=None):
    kind, delta, per_atom = tcfg.loss, tcfg.huber_delta, tcfg.energy_per_atom
    ema_decay = 0.0 if tcfg.ema_decay is None else tcfg.ema_decay
    sums_fn = error_sums

    def loss_and_pred(params, variables, graph, weights):
        v = {**variables, "params": params}
        if mesh is not None:  # stacked sub-batches, one per device (nnpes.training.parallel)
            return parallel.stacked_loss_and_pred(lambda v_, g: pot.energy_forces_stress(v_, g, compute_stress=use_stress),
                                                  v, graph, weights, kind=kind, delta=delta, energy_per_atom=per_atom, mesh=mesh)
        pred = pot.energy_forces_stress(v, graph, compute_stress=use_stress)
        return total_loss(pred, graph, weights, kind=kind, delta=delta, energy_per_atom=per_atom), pred

    if mesh is not None:
        sums_fn = parallel.stacked_error_sums

    def train_step(variables, opt_state, ema, step, graph, weights, lr_scale):
        counter["train"] += 1  # trace time only: counts compilations
        params = variables["params"]
        (loss, pred), grads = jax.value_and_grad(loss_and_pred, has_aux=True)(params, variables, graph, weights)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree_util.tree_map(lambda u: (u * lr_scale).astype(u.dtype), updates)
        params = optax.apply_updates(params, updates)
        ema = ema_update(ema, params, ema_decay, step)
        lr = schedule(step) * lr_scale  # the rate this step used (logged)
        return {**variables, "params": params}, opt_state, ema, loss, sums_fn(pred, graph), lr

    def eval_step(variables, params, graph, weights):
        counter["eval"] += 1
        loss, pred = loss_and_pred(params, variables, graph, weights)
        return loss, sums_fn(pred, graph)

    precision = tcfg.matmul_precision
    if mesh is not None:
        return (parallel.with_matmul_precision(parallel.data_parallel_step(train_step, mesh, batch_argnums=(4,)), precision),
                parallel.with_matmul_precision(parallel.data_parallel_step(eval_step, mesh, batch_argnums=(2,)), precision))
    return parallel.with_matmul_precision(jax.jit(train_step), precision), parallel.with_matmul_precision(jax.jit(eval_step), precision)


def _n_real(graph) -> int:
    """Real graphs in a padded batch (jraph convention: trailing empty graphs and the one before
    them, which owns the padding nodes, are padding)."""
    if np.ndim(graph.n_node) == 2:  # stacked sub-batches (data parallel)
        return parallel.real_graphs(graph)
    n_node = np.asarray(graph.n_node)
    trailing_empty = len(n_node) - len(np.trim_zeros(n_node, "b"))
    return int(len(n_node) - trailing_empty - 1)


def train(config, run_dir: str | Path | None = None, *, resume: bool = False, overrides=None,
          quiet: bool = False) -> dict:
    """Train from ``config`` (YAML path, dict or ``Config``) into ``run_dir`` (default
    ``output.run_dir``). Returns a summary dict (stop reason, best validation loss, test metrics,
    number of compiles, path of the saved model)."""
    from nnpes.potential import build_potential

    cfg: Config = config if isinstance(config, Config) else load_config(config, overrides)
    tcfg = cfg.training
    if tcfg.devices != 1:  # a multi-process run must join before JAX touches a device
        parallel.maybe_initialize_distributed()
    run_dir = Path(run_dir or cfg.output.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = run_dir / LATEST
    if not resume and latest.exists():
        raise FileExistsError(f"{run_dir} already holds a run ({LATEST}); pass --resume or choose another --run-dir")
    resuming = resume and latest.exists()
    log = _Log(run_dir / "train.log", quiet)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))

    t0 = time.perf_counter()
    from nnpes.training.data import load_splits

    splits = load_splits(cfg.data, cfg.model.elements)
    log(f"data: {len(splits['train'])} train, {len(splits['valid'])} valid, {len(splits['test'])} test structures")
    pot = build_potential(cfg.model, seed=tcfg.seed, dataset=splits["train"])
    dtype = pot.dtype
    cutoff = pot.cutoff
    train_graphs = [atoms_to_graph(a, cutoff) for a in splits["train"]]
    valid_graphs = [atoms_to_graph(a, cutoff) for a in splits["valid"]]
    has_stress = any(float(g.globals["has_stress"][0]) > 0 for g in train_graphs + valid_graphs)
    use_stress = bool(has_stress and (tcfg.stress_weight > 0 or any(s.stress_weight for s in tcfg.weight_schedule)))
    train_loader = _loader(train_graphs, tcfg, tcfg.batch_size, True, tcfg.seed)
    valid_loader = _loader(valid_graphs, tcfg, tcfg.valid_batch_size or tcfg.batch_size, False, 0) if valid_graphs else None
    steps_per_epoch = _n_batches(train_loader)
    mesh = parallel.training_mesh(tcfg.devices)
    put = (lambda g: _to_device(g, dtype)) if mesh is None else (lambda g: parallel.shard_batch(g, mesh, dtype))
    if mesh is not None:  # each global batch → one equal-shape sub-batch per device
        train_loader = parallel.ShardedLoader(
            train_loader, mesh.size, parallel.sub_batch_shape(train_graphs, tcfg.batch_size, mesh.size))
        if valid_loader is not None:
            vbs = tcfg.valid_batch_size or tcfg.batch_size
            valid_loader = parallel.ShardedLoader(valid_loader, mesh.size, parallel.sub_batch_shape(valid_graphs, vbs, mesh.size))
        log(f"data parallel over {mesh.size} devices ({jax.process_count()} process(es)): "
            f"{', '.join(str(d) for d in mesh.devices.flat)}")
    log(f"setup {time.perf_counter() - t0:.1f} s; {steps_per_epoch} steps/epoch; model {cfg.model.name} "
        f"({sum(x.size for x in jax.tree_util.tree_leaves(pot.params['params']))} parameters), dtype {cfg.model.dtype}")

    tx = make_optimizer(tcfg, steps_per_epoch)
    params = pot.params["params"]
    state = {
        "variables": pot.params,
        "opt_state": jax.jit(tx.init)(params),  # jitted: one compile instead of one per leaf op
        "ema": jax.tree_util.tree_map(jnp.array, params),
        "step": np.int64(0),
        "epoch": np.int64(0),
        "best_loss": np.float64(np.inf),
        "best_epoch": np.int64(-1),
        "lr_scale": np.float64(1.0),
        "plateau_bad": np.int64(0),
        "stop_bad": np.int64(0),
        "elapsed": np.float64(0.0),
    }
    if resuming:
        state = load_checkpoint(latest, state)
        log(f"resumed from {latest} at epoch {int(state['epoch'])}, step {int(state['step'])}")
    state["variables"] = jax.tree_util.tree_map(jnp.asarray, state["variables"])
    state["ema"] = jax.tree_util.tree_map(jnp.asarray, state["ema"])
    state["opt_state"] = jax.tree_util.tree_map(jnp.asarray, state["opt_state"])

    if mesh is not None:
        for key in ("variables", "ema", "opt_state"):
            state[key] = parallel.replicate(state[key], mesh)

    counter = {"train": 0, "eval": 0}
    train_step, eval_step = _make_steps(pot, tx, tcfg, use_stress, counter, lr_schedule(tcfg, steps_per_epoch), mesh)
    csv_log = CSVLog(run_dir / "metrics.csv", resume_epoch=int(state["epoch"]))
    progress = sys.stderr.isatty() if tcfg.progress is None else tcfg.progress

    stop_reason = "max_epochs"
    wall0 = time.perf_counter() - float(state["elapsed"])
    while int(state["epoch"]) < tcfg.max_epochs:
        epoch = int(state["epoch"])
        if tcfg.max_time is not None and float(state["elapsed"]) >= tcfg.max_time:
            stop_reason = "max_time"
            break
        weights = {k: jnp.asarray(v, dtype) for k, v in loss_weights(tcfg, epoch).items()}
        lr_scale = jnp.asarray(float(state["lr_scale"]), dtype)
        train_loader.set_epoch(epoch)
        batches = iter(train_loader)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}", leave=False)
            batches = bar
        sums, loss_sum, n_graphs, lr = None, 0.0, 0, math.nan
        variables, opt_state, ema, step = state["variables"], state["opt_state"], state["ema"], int(state["step"])
        for graph in batches:
            n = _n_real(graph)
            variables, opt_state, ema, loss, s, lr = train_step(
                variables, opt_state, ema, jnp.asarray(step, dtype), put(graph), weights, lr_scale)
            step += 1
            loss_sum += float(loss) * n
            n_graphs += n
            sums = add_sums(sums, s)
            if not math.isfinite(float(loss)):
                raise FloatingPointError(f"epoch {epoch}, step {step}: training loss is {float(loss)}; lower training.lr")
        if bar is not None:
            bar.close()
        train_m = reduce_sums(sums, n_graphs, loss_sum)
        if valid_loader is not None:
            vs, vloss, vn = None, 0.0, 0
            for graph in valid_loader:
                n = _n_real(graph)
                loss, s = eval_step(variables, ema, put(graph), weights)
                vloss += float(loss) * n
                vn += n
                vs = add_sums(vs, s)
            valid_m = reduce_sums(vs, vn, vloss)
        else:
            valid_m = dict(train_m)
        lr_now = float(lr)

        # bookkeeping on the host; everything below is part of the checkpointed state
        improved = valid_m["loss"] < float(state["best_loss"])
        state.update(variables=variables, opt_state=opt_state, ema=ema, step=np.int64(step), epoch=np.int64(epoch + 1))
        if improved:
            state.update(best_loss=np.float64(valid_m["loss"]), best_epoch=np.int64(epoch), plateau_bad=np.int64(0), stop_bad=np.int64(0))
        else:
            state["plateau_bad"] = np.int64(int(state["plateau_bad"]) + 1)
            state["stop_bad"] = np.int64(int(state["stop_bad"]) + 1)
            if tcfg.schedule == "plateau" and int(state["plateau_bad"]) >= tcfg.plateau_patience:
                new = max(float(state["lr_scale"]) * tcfg.plateau_factor, tcfg.min_lr / tcfg.lr)
                state.update(lr_scale=np.float64(new), plateau_bad=np.int64(0))
        state["elapsed"] = np.float64(time.perf_counter() - wall0)
        # best before latest: a kill in between leaves latest at the previous epoch, which resumes
        # and redoes this epoch identically.
        if improved:
            save_checkpoint(run_dir / BEST, state)
        save_checkpoint(latest, state)
        csv_log.write({
            "epoch": epoch, "step": step, "time_s": float(state["elapsed"]), "lr": lr_now,
            "train_loss": train_m["loss"], "valid_loss": valid_m["loss"],
            "train_e_mae_meV_atom": train_m["e_mae_meV_atom"], "train_f_mae_meV_A": train_m["f_mae_meV_A"],
            "train_f_rmse_meV_A": train_m["f_rmse_meV_A"],
            "valid_e_mae_meV_atom": valid_m["e_mae_meV_atom"], "valid_e_rmse_meV_atom": valid_m["e_rmse_meV_atom"],
            "valid_f_mae_meV_A": valid_m["f_mae_meV_A"], "valid_f_rmse_meV_A": valid_m["f_rmse_meV_A"],
            "valid_s_mae_meV_A3": valid_m["s_mae_meV_A3"],
        })
        log(f"epoch {epoch:4d}  loss {train_m['loss']:.4g} / {valid_m['loss']:.4g}  "
            f"valid E {valid_m['e_mae_meV_atom']:.3g} meV/atom  F {valid_m['f_mae_meV_A']:.3g} meV/Å  "
            f"lr {lr_now:.3g}  {float(state['elapsed']):.0f} s" + ("  *" if improved else ""))
        if tcfg.early_stopping_patience is not None and int(state["stop_bad"]) >= tcfg.early_stopping_patience:
            stop_reason = "early_stopping"
            break
        if tcfg.max_time is not None and float(state["elapsed"]) >= tcfg.max_time:
            stop_reason = "max_time"
            break

    n_buckets = len(getattr(train_loader, "shapes", ())) + (len(getattr(valid_loader, "shapes", ())) if valid_loader else 0)
    log(f"stopped ({stop_reason}) after epoch {int(state['epoch'])}; compiles this process: train step "
        f"{counter['train']}, eval step {counter['eval']} (padded shapes: train "
        f"{len(getattr(train_loader, 'shapes', ()))}, valid {len(getattr(valid_loader, 'shapes', ())) if valid_loader else 0})")
    return _finish(cfg, run_dir, pot, state, splits, stop_reason, counter, n_buckets, log)


def _finish(cfg, run_dir, pot, state, splits, stop_reason, counter, n_buckets, log) -> dict:
    """Save the best EMA parameters as the model, evaluate on the test set, write plots."""
    from nnpes.training.evaluate import evaluate, format_metrics

    best_path = run_dir / BEST
    final = state
    if best_path.exists():
        final = load_checkpoint(best_path, jax.device_get(state))
    variables = jax.tree_util.tree_map(jnp.asarray, {**final["variables"], "params": final["ema"]})
    model = pot.replace(variables)
    model_dir = model.save(run_dir / "model")
    log(f"model (best epoch {int(final['best_epoch'])}, EMA parameters) saved to {model_dir}")
    result = {
        "run_dir": str(run_dir), "model": str(model_dir), "stop_reason": stop_reason,
        "epochs": int(state["epoch"]), "steps": int(state["step"]), "best_epoch": int(final["best_epoch"]),
        "best_valid_loss": float(final["best_loss"]), "elapsed_s": float(state["elapsed"]),
        "n_compiles": dict(counter), "n_padded_shapes": n_buckets, "test_metrics": None,
    }
    if cfg.output.plots and (run_dir / "metrics.csv").exists():
        plot_learning_curve(run_dir / "metrics.csv", run_dir / "learning_curve.png")
    test = splits["test"] or splits["valid"]
    name = "test" if splits["test"] else "valid"
    if test:
        m = evaluate(model, test, out=run_dir / f"{name}_metrics.json",
                     plot=(run_dir / f"parity_{name}.png") if cfg.output.plots else None,
                     title=f"{cfg.model.name}, {name} set ({len(test)} structures)")
        result["test_metrics"] = m
        log(f"{name} set ({len(test)} structures):\n" + format_metrics(m))
    (run_dir / "result.yaml").write_text(yaml.safe_dump(result, sort_keys=False, allow_unicode=True))
    return result
