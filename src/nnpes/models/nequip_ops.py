"""Edge-pair bookkeeping for the NequIP radial MLP: r_ij = r_ji, so evaluate it once per pair.

The radial MLP output GEMM is ~92 % of a NequIP call's FLOPs (benchmarks/README.md, Inference).
A full neighbour list holds every unordered pair twice: (i ← j, v) and (j ← i, −v), where
v = r_j − r_i + S·cell. ``edge_pairs`` finds the partners inside the jitted model (one sort of E
keys, no extra graph field, so every caller — predict, training, MD — gets it); the model then
evaluates one radial MLP row per pair and sends both messages of the pair from it.

The pairing is verified on device (partners swap sender and receiver and have exactly opposite
vectors, which holds bit for bit when vectors are formed as r_j − r_i + S·cell). If any real edge
has no partner — a half list, or vectors from a displacement function that is not exactly
antisymmetric — ``valid`` is False and the caller falls back to one MLP row per edge, so a
mismatch costs speed, never correctness.

Forces stay exact: the pair's radial weights are computed from the first edge's length; as both
lengths are the same function of the positions (and of the strain), ∂E/∂R is unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class EdgePairs(NamedTuple):
    """first, second (P,) int32 edge indices of each pair (P = ceil(E/2); when E is odd the last
    pair is one padding edge twice), valid () bool: every real edge has its reverse."""

    first: jnp.ndarray
    second: jnp.ndarray
    valid: jnp.ndarray


def edge_pairs(vectors, senders, receivers, edge_mask) -> EdgePairs:
    """Pair each directed edge with its reverse. vectors (E, 3) Å, senders/receivers (E,) int,
    edge_mask (E,) bool. Padding edges pair among themselves (after all real edges)."""
    n_edge = vectors.shape[0]
    i, j = receivers.astype(jnp.int32), senders.astype(jnp.int32)
    x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    lex_positive = (x > 0) | ((x == 0) & ((y > 0) | ((y == 0) & (z > 0))))
    # Both directions get the same key (min(i,j), max(i,j), v oriented from the lower index; for
    # self-images i == j, v oriented lexicographically positive), so partners sort next to each other.
    flip = jnp.where(i == j, ~lex_positive, i > j)
    v = jnp.where((flip & edge_mask)[:, None], -vectors, jnp.where(edge_mask[:, None], vectors, 0.0))
    big = jnp.iinfo(jnp.int32).max  # padding edges sort last
    a = jnp.where(edge_mask, jnp.minimum(i, j), big)
    b = jnp.where(edge_mask, jnp.maximum(i, j), big)
    iota = jnp.arange(n_edge, dtype=jnp.int32)
    order = jax.lax.sort((a, b, v[:, 0], v[:, 1], v[:, 2], iota), num_keys=5)[-1]
    if n_edge % 2:
        order = jnp.concatenate([order, order[-1:]])
    first, second = order[0::2], order[1::2]
    m_f, m_s = edge_mask[first], edge_mask[second]
    partners = (
        (i[first] == j[second]) & (j[first] == i[second]) & (first != second)
        & jnp.all(vectors[first] == -vectors[second], axis=-1)
    )
    valid = jnp.all(jnp.where(m_f | m_s, m_f & m_s & partners, True))
    return EdgePairs(first, second, valid)
