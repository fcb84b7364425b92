"""Edge-pair bookkeeping for the NequIP radial MLP: r_ij = r_ji, so evaluate it once per pair.

The radial MLP output GEMM is ~92 % of a NequIP call's FLOPs (benchmarks/README.md, Inference).
A full neighbour list holds every unordered pair twice: (i ← j, v) and (j ← i, −v), where
v = r_j − r_i + S·cell. ``edge_pairs`` finds the partners inside the jitted model (one sort of E
keys, no extra graph field, so every caller — predict, training — gets it); the MD loop hands them
in instead (``ModelInputs.pairs``, from its list's reverse index, found once per rebuild). The
model then evaluates one radial MLP row per pair and sends both messages of the pair from it.

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

import jax.numpy as jnp

from nnpes.graph.pairs import reverse_pairs


class EdgePairs(NamedTuple):
    """first, second (P,) int32 edge indices of each pair (P = ceil(E/2); when E is odd the last
    pair is one padding edge twice), valid () bool: every real edge has its reverse."""

    first: jnp.ndarray
    second: jnp.ndarray
    valid: jnp.ndarray


def edge_pairs(vectors, senders, receivers, edge_mask) -> EdgePairs:
    """Pair each directed edge with its reverse (``graph.pairs.reverse_pairs`` on the vectors).
    vectors (E, 3) Å, senders/receivers (E,) int, edge_mask (E,) bool. Padding edges pair among
    themselves (after all real edges)."""
    return EdgePairs(*reverse_pairs(receivers, senders, vectors, edge_mask))
