"""Optimiser, learning-rate schedule, weight-decay mask and parameter EMA (optax).

The learning rate is ``schedule(step) * lr_scale``: ``schedule`` (warm-up, then constant, cosine or
exponential) is a pure function of the step inside optax; ``lr_scale`` is a scalar the trainer
passes to each step and lowers on a validation plateau, so reduce-on-plateau never recompiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# Parameters of nnpes.models.energy.EnergyModel that are physical offsets/scales, never decayed.
NO_DECAY = ("e0", "scale", "offset")


def lr_schedule(cfg, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate vs optimiser step for ``cfg`` (a ``TrainingConfig``)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    total = max(cfg.max_epochs * steps_per_epoch - warmup, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, total, alpha=min(cfg.min_lr / cfg.lr, 1.0))
    elif cfg.schedule == "exponential":
        after = optax.exponential_decay(cfg.lr, steps_per_epoch, cfg.decay_rate, end_value=cfg.min_lr)
    else:  # constant and plateau (plateau acts through lr_scale)
        after = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def decay_mask(params):
    """True on weight matrices (ndim ≥ 2) outside the energy wrapper's e0/scale/offset."""

    def keep(path, leaf):
        names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
        return bool(jnp.ndim(leaf) >= 2 and not any(n in NO_DECAY for n in names))

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """Clip → Adam/AMSGrad moments → decoupled weight decay (adamw, masked) → −lr(step)."""
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.optimizer == "amsgrad":
        parts.append(optax.scale_by_amsgrad(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps))
    else:
        parts.append(optax.scale_by_adam(b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps))
    if cfg.optimizer == "adamw" and cfg.weight_decay > 0:
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(lr_schedule(cfg, steps_per_epoch)))
    return optax.chain(*parts)


def ema_update(ema, params, decay: float, step):
    """EMA with the usual warm start: effective decay min(decay, (1+t)/(10+t))."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: (d * e + (1.0 - d) * p).astype(p.dtype), ema, params)
