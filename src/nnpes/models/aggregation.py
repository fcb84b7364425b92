"""Sum of per-edge messages onto their receiving nodes, in cache-sized blocks for large graphs.

Shared by the message-passing models (NequIP, MACE): their per-edge intermediates (edges ×
channels × irreps dimensions) are the largest arrays of a call, so above a size they are made and
summed one block of edges at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sum_messages(fn, chunk: int | None, consts, n_node: int, *edge_arrays, indices_are_sorted=False, active=None):
    """(N, D) Σ of per-edge messages over their target nodes. fn(consts, *edge_arrays) returns a
    list of (targets (B,) int, messages (B, D)).

    Above ``chunk`` rows the sum runs as a ``lax.scan`` over blocks of ``chunk`` rows,
    rematerialised in the backward pass, and as a whole in a second derivative (a training step
    on forces): per-edge intermediates stay block-sized (in cache, and memory O(N + chunk) rather
    than O(E)). Rows are padded to whole blocks with zeros (zero basis → zero radial weights →
    zero message).

    ``active`` (rows,) bool: the rows that may carry a message (the edge mask). A block with none
    is skipped (``lax.cond``), forward and backward: padding sorted last then costs nothing, so
    the MD loop's head room of model slots over the pairs (about 1.3×) is free (issue 13 §1).
    Exact: a padding row's message is zero, and so is the gradient through its masked geometry."""
    n_rows = edge_arrays[0].shape[0]
    if chunk is None or n_rows <= chunk:
        return sum(jax.ops.segment_sum(m, t, n_node, indices_are_sorted=indices_are_sorted) for t, m in fn(consts, *edge_arrays))
    n_blocks = -(-n_rows // chunk)
    pad = n_blocks * chunk - n_rows
    blocks = [jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape((n_blocks, chunk) + x.shape[1:]) for x in edge_arrays]
    if active is None:
        body = jax.checkpoint(lambda consts, xs, _: fn(consts, *xs))
    else:
        # The cond sits inside the checkpoint: the scan then saves only each block's inputs for the
        # backward pass (a cond outside it makes the block's residuals per-iteration outputs).
        def live_messages(consts, xs, live):
            shapes = jax.eval_shape(lambda: fn(consts, *xs))
            zeros = lambda _: [(jnp.zeros(t.shape, t.dtype), jnp.zeros(m.shape, m.dtype)) for t, m in shapes]  # noqa: E731
            return jax.lax.cond(live, lambda xs: fn(consts, *xs), zeros, xs)
        body = jax.checkpoint(live_messages)
    live = None if active is None else jnp.pad(active, (0, pad)).reshape(n_blocks, chunk).any(axis=1)
    width = jax.eval_shape(lambda xs: fn(consts, *xs), [x[0, :1] for x in blocks])[0][1].shape[-1]

    def blocked_sum(consts, blocks, live):
        def step(acc, xs):
            block, live = xs
            for t, m in body(consts, block, live):
                acc = acc.at[t].add(m, indices_are_sorted=indices_are_sorted)
            return acc, None
        return jax.lax.scan(step, jnp.zeros((n_node, width), consts[0].dtype), (blocks, live))[0]

    # The whole scan is rematerialised too. A training step differentiates the forces' backward
    # scan again; the per-block checkpoint alone does not stop that outer pass from saving every
    # block's intermediates, O(E) again. Measured (NequIP, 500-atom Cu, one core): step temp
    # memory 659 -> 75 MB and time 1.01 -> 0.62 s; MACE, 256 atoms: 1165 -> 416 MB, 2.16 -> 1.84 s.
    return jax.checkpoint(blocked_sum)(consts, blocks, live)


def use_blocks(n_edges, chunk: int | None, block_above: int) -> bool:
    """Whether per-edge work runs in blocks: more than ``block_above`` edges and blocking on
    (``chunk`` not None). A symbolic edge count (``jax.export`` with symbolic shapes, ``nnpes
    export``) takes the unblocked path, which is valid for every size and gives the same energies."""
    if chunk is None or jax.export.is_symbolic_dim(n_edges):
        return False
    return n_edges > block_above
