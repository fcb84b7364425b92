"""Each directed edge with its reverse: (i ← j, d) and (j ← i, −d), with d the edge's vector
(r_j − r_i + S·cell, Å) or its integer cell shift S. Used on the model's edges
(``models.nequip_ops.edge_pairs``: vectors, one sort per call) and on the MD neighbour list
(``graph.verlet.list_reverse``: shifts, one sort per rebuild)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reverse_pairs(receivers, senders, d, real):
    """(first, second (ceil(E/2),) int32, valid () bool): edges sorted so that partners sit side by
    side, every real edge with its reverse when ``valid``. ``d`` (E,3) float or int, negated on
    reversal; ``real`` (E,) bool (padding pairs among itself, after all real edges; when E is odd
    the last pair is one padding edge twice). ``valid`` is False if a real edge has no partner (a
    half list, or vectors that are not exactly antisymmetric)."""
    n_edge = d.shape[0]
    i, j = receivers.astype(jnp.int32), senders.astype(jnp.int32)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    lex_positive = (x > 0) | ((x == 0) & ((y > 0) | ((y == 0) & (z > 0))))
    # Both directions get the same key (min(i,j), max(i,j), d oriented from the lower index; for
    # self-images i == j, d oriented lexicographically positive), so partners sort next to each other.
    flip = jnp.where(i == j, ~lex_positive, i > j)
    key = jnp.where((flip & real)[:, None], -d, jnp.where(real[:, None], d, 0))
    big = jnp.iinfo(jnp.int32).max  # padding edges sort last
    a = jnp.where(real, jnp.minimum(i, j), big)
    b = jnp.where(real, jnp.maximum(i, j), big)
    iota = jnp.arange(n_edge, dtype=jnp.int32)
    order = jax.lax.sort((a, b, key[:, 0], key[:, 1], key[:, 2], iota), num_keys=5)[-1]
    if n_edge % 2:
        order = jnp.concatenate([order, order[-1:]])
    first, second = order[0::2], order[1::2]
    m_f, m_s = real[first], real[second]
    partners = (
        (i[first] == j[second]) & (j[first] == i[second]) & (first != second)
        & jnp.all(d[first] == -d[second], axis=-1)
    )
    valid = jnp.all(jnp.where(m_f | m_s, m_f & m_s & partners, True))
    return first, second, valid
