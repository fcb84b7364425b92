"""The one training step: shared by ``train()``, the data-parallel path and ``Ensemble.fit``.

    tx = make_optimizer(cfg.training, steps_per_epoch)
    train_step, eval_step = make_train_step(pot.energy_forces_stress, tx, cfg.training)
    state = TrainState.create(pot.params, tx)
    step = jax.jit(train_step)
    for graph in batches:                       # padded device graphs (nnpes.graph.device_graph)
        state, m = step(state, graph, {"energy": 1.0, "forces": 100.0, "stress": 0.0}, 1.0)

Both steps are pure functions of PyTrees, so they can be jitted, vmapped over committee members
(``Ensemble.fit``) or jitted over a device mesh (``compile_steps(..., mesh=...)``). The loss is
``nnpes.training.loss`` (its one home); with a mesh the batch is stacked sub-batches and the loss is
the global weighted mean over them (``parallel.stacked_loss_and_pred``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from nnpes.training import parallel
from nnpes.training.loss import error_sums, loss_sums, mean_terms
from nnpes.training.optim import ema_update


@flax.struct.dataclass
class TrainState:
    """What one step changes: ``variables`` (flax collections; ``params`` trains), optimiser state,
    EMA of the parameters (None when not tracked) with the rounding its sums lost (``ema_err``,
    ``optim.ema_update``) and the number of optimiser steps taken."""

    variables: Any
    opt_state: Any
    ema: Any
    step: Any
    ema_err: Any = None

    @classmethod
    def create(cls, variables, tx: optax.GradientTransformation, *, ema: bool = True) -> "TrainState":
        params = variables["params"]
        return cls(variables=variables,
                   opt_state=jax.jit(tx.init)(params),  # jitted: one compile instead of one per leaf op
                   ema=jax.tree_util.tree_map(jnp.array, params) if ema else None,
                   step=jnp.zeros((), jnp.int32),
                   ema_err=jax.tree_util.tree_map(jnp.zeros_like, params) if ema else None)


class StepMetrics(NamedTuple):
    """``loss`` (weighted mean over the batch), ``sums`` (``loss.error_sums``, summed over
    sub-batches), ``lr`` (the learning rate the step used; 0 for evaluation) and ``terms``: the
    weighted loss's ``energy``, ``forces`` and ``stress`` parts w_X L_X (they add up to ``loss``)."""

    loss: jax.Array
    sums: dict
    lr: jax.Array
    terms: dict | None = None


class LossOptions(NamedTuple):
    """The static loss settings (``training.loss``): ``kind`` mse | huber, ``delta``, ``energy_per_atom``."""

    kind: str = "mse"
    delta: float = 0.01
    energy_per_atom: bool = True

    @classmethod
    def of(cls, tcfg) -> "LossOptions":
        return cls(tcfg.loss, tcfg.huber_delta, tcfg.energy_per_atom)


def make_train_step(energy_fn: Callable, tx: optax.GradientTransformation, loss: LossOptions = LossOptions(), *,
                    schedule: Callable | None = None, ema_decay: float | None = 0.0, mesh=None,
                    on_trace: Callable[[str], None] | None = None):
    """Pure ``train_step(state, graph, weights, lr_scale) -> (state, StepMetrics)`` and
    ``eval_step(state, graph, weights) -> StepMetrics`` (EMA parameters when tracked).

    ``energy_fn(variables, graph) -> {"energy" (G,) eV, "forces" (N,3) eV/Å[, "stress"]}``;
    ``weights``: w_E, w_F, w_S (traced: a weight schedule does not recompile); ``lr_scale``
    multiplies the optimiser's update (reduce-on-plateau, or the whole rate with a unit-rate ``tx``);
    ``schedule(step)`` only reports the rate. ``ema_decay=None``: no EMA. ``mesh``: ``graph`` is a
    stacked batch (``parallel.shard_batch``). ``on_trace("train"|"eval")`` runs once per compile."""
    kw = loss._asdict()

    def loss_and_pred(params, variables, graph, weights):
        """(loss, (pred, loss terms)): ``value_and_grad``'s auxiliary output carries both."""
        v = {**variables, "params": params}
        if mesh is not None:
            loss_value, pred, terms = parallel.stacked_loss_and_pred(energy_fn, v, graph, weights, mesh=mesh,
                                                                       terms=True, **kw)
            return loss_value, (pred, terms)
        pred = energy_fn(v, graph)
        loss_value, terms = mean_terms(*loss_sums(pred, graph, weights, **kw))
        return loss_value, (pred, terms)

    sums_fn = error_sums if mesh is None else parallel.stacked_error_sums

    def train_step(state: TrainState, graph, weights, lr_scale):
        if on_trace is not None:
            on_trace("train")
        params = state.variables["params"]
        (loss_value, (pred, terms)), grads = jax.value_and_grad(loss_and_pred, has_aux=True)(params, state.variables, graph, weights)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        updates = jax.tree_util.tree_map(lambda u: (u * lr_scale).astype(u.dtype), updates)
        params = optax.apply_updates(params, updates)
        step = jnp.asarray(state.step, jnp.result_type(lr_scale))
        ema, ema_err = state.ema, state.ema_err
        if ema_decay is not None:
            ema, ema_err = ema_update(ema, ema_err, params, ema_decay, step)
        lr = (schedule(state.step) if schedule is not None else 1.0) * lr_scale
        new = state.replace(variables={**state.variables, "params": params}, opt_state=opt_state, ema=ema,
                            ema_err=ema_err, step=state.step + 1)
        return new, StepMetrics(loss_value, sums_fn(pred, graph), lr, terms)

    def eval_step(state: TrainState, graph, weights):
        if on_trace is not None:
            on_trace("eval")
        params = state.variables["params"] if state.ema is None else state.ema
        loss_value, (pred, terms) = loss_and_pred(params, state.variables, graph, weights)
        return StepMetrics(loss_value, sums_fn(pred, graph), jnp.zeros_like(loss_value), terms)

    return train_step, eval_step


def compile_steps(train_step, eval_step, *, mesh=None, precision: str | None = None):
    """``jax.jit`` both steps (over ``mesh`` when given: the batch argument split over its devices,
    everything else replicated) under matmul ``precision``."""
    if mesh is None:
        jitted = jax.jit(train_step), jax.jit(eval_step)
    else:
        jitted = (parallel.data_parallel_step(train_step, mesh, batch_argnums=(1,)),
                  parallel.data_parallel_step(eval_step, mesh, batch_argnums=(1,)))
    return tuple(parallel.with_matmul_precision(f, precision) for f in jitted)
