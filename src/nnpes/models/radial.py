"""Radial building blocks: safe edge lengths, Bessel basis, smooth polynomial cutoff envelope.

Shared by every model. All functions are pure jnp and take ``r`` of shape (E,) in Å.
Padding edges have zero vectors (r = 0); these functions stay finite there and have finite,
well-defined gradients, and callers mask padding edges out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def safe_norm(vectors: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """|v| with a zero (not NaN) gradient at v = 0. vectors (..., 3) Å -> (...,) Å."""
    sq = jnp.sum(vectors * vectors, axis=axis)
    nonzero = sq > 0
    # Double `where`: sqrt never sees 0, so its infinite derivative never multiplies a zero cotangent.
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def polynomial_envelope(r: jnp.ndarray, cutoff: float, p: int = 6) -> jnp.ndarray:
    """Smooth cutoff u(r) (Klicpera et al. 2020, DimeNet eq. 8), dimensionless, same shape as r.

    u(0) = 1; u, u' and u'' vanish at r = cutoff (Å) (C² cut), u = 0 beyond it:
        u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2),  x = r / cutoff.
    """
    if p < 2:
        raise ValueError(f"polynomial_envelope needs p >= 2 for a smooth cutoff, got p={p}")
    x = r / cutoff
    x_in = jnp.where(x < 1.0, x, 0.0)  # keeps the polynomial (and its gradient) finite beyond the cutoff
    xp = x_in**p
    u = 1.0 - 0.5 * (p + 1) * (p + 2) * xp + p * (p + 2) * xp * x_in - 0.5 * p * (p + 1) * xp * x_in * x_in
    return jnp.where(x < 1.0, u, 0.0)


def bessel_basis(r: jnp.ndarray, cutoff: float, n: int = 8) -> jnp.ndarray:
    """Radial Bessel functions sqrt(2/c) sin(k π r / c) / r, k = 1..n. r (E,) Å -> (E, n) in 1/Å^(3/2).

    At r = 0 (padding edges) the limit k π / c · sqrt(2/c) is returned, with a finite gradient."""
    k = jnp.arange(1, n + 1, dtype=r.dtype)
    r_safe = jnp.where(r > 0, r, 1.0)[..., None]
    arg = k * (jnp.pi / cutoff) * r_safe
    value = jnp.sqrt(2.0 / cutoff) * jnp.sin(arg) / r_safe
    limit = jnp.sqrt(2.0 / cutoff) * k * (jnp.pi / cutoff)
    return jnp.where((r > 0)[..., None], value, limit)


def edge_geometry(vectors, edge_mask, cutoff: float, num_bessel: int, p: int):
    """Unit vectors (E, 3) and the enveloped Bessel basis (E, num_bessel) of edge vectors (E, 3) Å,
    both zero on padding edges: the radial and angular inputs every message-passing model uses."""
    r = safe_norm(vectors)
    unit = vectors / jnp.where(r > 0, r, 1.0)[:, None]
    env = polynomial_envelope(r, cutoff, p) * edge_mask
    basis = bessel_basis(r, cutoff, num_bessel) * env[:, None]
    return jnp.where(edge_mask[:, None], unit, 0.0), basis


# The activations a config may name (NequIP's ``activation``, MACE's ``gate``); each is 0 at 0.
ACTIVATIONS = {"silu": jax.nn.silu, "tanh": jnp.tanh}


def mlp(kernels: list, x, gate=jax.nn.silu):
    """Bias-free dense layers ``kernels`` with ``gate`` between them: (..., n) → (..., out).
    As the radial MLP, (E, n_basis) enveloped basis → (E, out) weights: with gate(0) = 0, zero
    basis in gives zero weights out, so the weights are smooth and vanish with the envelope at
    r_cut. A pure function, so it can run inside ``lax.scan``."""
    for k in kernels[:-1]:
        x = gate(x @ k)
    return x @ kernels[-1]
