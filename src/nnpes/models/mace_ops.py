"""MACE's operations: the symmetric contraction (product basis B from the one-particle basis A,
MACE eq. 10-11) and the edge messages that make A.

For one node i and one channel k, A_ik is a vector of dimension d carrying the irreps
``0e + 1o + 2e + ...`` (one copy of each). The ν-body product basis is the ν-th symmetric power of
A reduced onto output irreps L:

    B_ikLM = Σ_ν Σ_η W^ν_{Z_i, η, k} Σ_{a_1..a_ν} C^ν_{η, LM; a_1..a_ν} A_ik,a_1 ··· A_ik,a_ν

C^ν (the generalised Clebsch–Gordan coupling) comes once from e3nn-jax's
``reduced_symmetric_tensor_product_basis`` (float64 numpy, cached per irreps and ν). As C^ν is
symmetric in a_1..a_ν, the sum runs over monomials a_1 ≤ ... ≤ a_ν only, each weighted by its
number of orderings, and monomials whose coupling vanishes for every kept output are dropped
(parity and angular-momentum selection rules remove most). On the device every non-zero
(monomial, path) pair of every order is one term: a product of rows of A and one weight, summed
into B by one small GEMM (``symmetric_contraction``). Every monomial has degree ν ≥ 1, so A = 0 (a
padding or isolated node) gives B = 0 exactly.

The one-particle basis A is made from edge messages (``edge_product``, ``edge_messages``) that
equal e3nn-jax's ``tensor_product`` output, written out for speed.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np


class Coupling(NamedTuple):
    """Coupling of one correlation order ν, for one channel.

    monomials (P, ν) int: indices a_1 ≤ ... ≤ a_ν into A's irreps dimension d;
    coefficients (P, Q, D) float64: Q paths η (over all outputs), D = output irreps dimension
    (each path writes into the block of its own output irrep only)."""

    monomials: np.ndarray
    coefficients: np.ndarray


@functools.lru_cache(maxsize=None)
def coupling(irreps_in: str, irreps_out: str, order: int) -> Coupling:
    """C^ν for A with irreps ``irreps_in`` (multiplicity 1 each) onto ``irreps_out`` (multiplicity
    1 each, e.g. "0e+1o"). Q = 0 (no path) gives a (P, 0, D) coefficient array."""
    ir_in, ir_out = e3nn.Irreps(irreps_in), e3nn.Irreps(irreps_out)
    if any(mul != 1 for mul, _ in ir_in + ir_out):
        raise ValueError(f"coupling: expected multiplicity-1 irreps, got {ir_in} -> {ir_out}")
    d = ir_in.dim
    basis = e3nn.reduced_symmetric_tensor_product_basis(ir_in, order, keep_ir=[ir for _, ir in ir_out])
    full = np.asarray(basis.array, np.float64)  # (d,)*ν + (basis.irreps.dim,)
    out_slice = {ir: s for (_, ir), s in zip(ir_out, ir_out.slices())}
    blocks = []  # (d,)*ν + (Q_chunk, D) per chunk of the basis's output irreps
    for (mul, ir), s in zip(basis.irreps, basis.irreps.slices()):
        block = np.zeros((d,) * order + (mul, ir_out.dim))
        block[..., out_slice[ir]] = full[..., s].reshape((d,) * order + (mul, ir.dim))
        blocks.append(block)
    dense = np.concatenate(blocks, axis=-2) if blocks else np.zeros((d,) * order + (0, ir_out.dim))
    monomials = np.array(list(itertools.combinations_with_replacement(range(d), order)), np.int32)
    orderings = [math.factorial(order) / math.prod(math.factorial(c) for c in np.unique(m, return_counts=True)[1])
                 for m in monomials]
    coefficients = np.stack([w * dense[tuple(m)] for w, m in zip(orderings, monomials)])
    keep = np.abs(coefficients).reshape(len(monomials), -1).max(axis=1, initial=0.0) > 1e-12
    return Coupling(monomials[keep], coefficients[keep])


class Terms(NamedTuple):
    """All orders' couplings as one list of J terms, each a product of A's rows and one weight:
    factors (J, ν_max) int rows of A (row d is a constant 1, padding lower orders up to ν_max),
    weight (J,) int index into the orders' weights concatenated along Q,
    coefficients (D, J) float64: what each term adds to each output component."""

    factors: np.ndarray
    weight: np.ndarray
    coefficients: np.ndarray


def _terms(couplings, d: int) -> Terms:
    """Terms of ``couplings`` for A with d rows."""
    nu_max = max(c.monomials.shape[1] for c in couplings)
    factors, weight, columns, offset = [], [], [], 0
    for c in couplings:
        n_mono, n_paths, _ = c.coefficients.shape
        for p, q in itertools.product(range(n_mono), range(n_paths)):
            if np.abs(c.coefficients[p, q]).max() > 1e-12:
                factors.append(list(c.monomials[p]) + [d] * (nu_max - c.monomials.shape[1]))
                weight.append(offset + q)
                columns.append(c.coefficients[p, q])
        offset += n_paths
    return Terms(np.array(factors, np.int32).reshape(-1, nu_max), np.array(weight, np.int32),
                 np.array(columns, np.float64).reshape(-1, couplings[0].coefficients.shape[2]).T)


# Nodes per block of the contraction: 2 nodes × C channels of terms stay in cache; measured 7×
# faster than whole-array gathers for the forward + backward at 540 atoms (benchmarks/README.md, MACE).
NODE_BLOCK = 2


def symmetric_contraction(a, weights, couplings, node_block: int = NODE_BLOCK):
    """B (N, C, D) from A (N, C, d) and per-node weights, one entry per order ν = 1, 2, ...:
    weights[ν-1] (N, Q_ν, C) (the node's element's weights, gathered once per node),
    couplings[ν-1] a ``Coupling``.

    Each term (one non-zero coefficient row) multiplies ν rows of A and one weight, elementwise
    over the node × channel lanes; one small GEMM sums the terms into B. The work runs in blocks
    of ``node_block`` nodes (``lax.map``, rematerialised in the backward pass) so the (J, lanes)
    products stay in cache: gathers of whole (J, N, C) arrays and their scatter-add gradients
    are what made this slow. Inside a block the lanes (node, channel) are the last axis, so the
    rows are contiguous and the GEMM needs no transpose; the layout changes once, outside the
    loop. Every term has at least one real factor, so A = 0 gives B = 0."""
    terms = _terms(couplings, a.shape[-1])
    n, c, d_out = a.shape[0], a.shape[1], terms.coefficients.shape[0]
    if terms.weight.size == 0:
        return jnp.zeros((n, c, d_out), a.dtype)
    coefficients = jnp.asarray(terms.coefficients, a.dtype)
    n_blocks = -(-n // node_block)

    def lanes_last(x):  # (N, C, k) → (blocks, k, node_block·C)
        x = jnp.pad(x, [(0, n_blocks * node_block - n), (0, 0), (0, 0)])
        x = jnp.moveaxis(x.reshape((n_blocks, node_block) + x.shape[1:]), 3, 1)
        return x.reshape(n_blocks, x.shape[1], node_block * c)

    def block(xs):
        rows, w = xs  # (d, L), (Q, L)
        rows = jnp.concatenate([rows, jnp.ones_like(rows[:1])])  # row d: the constant 1
        prod = functools.reduce(lambda x, y: x * y, [rows[f] for f in terms.factors.T])
        return coefficients @ (prod * w[terms.weight])  # (D, L)

    # Rematerialised as a whole as well as per block: under a training step's second derivative
    # (the gradient of a loss on forces) the per-block checkpoint alone left the loop saving
    # six (J, lanes) residuals per block; now only A and W are kept (benchmarks/README.md, MACE).
    @jax.checkpoint
    def contract(a, w):  # (N, C, d), (N, Q, C)
        xs = (lanes_last(a), lanes_last(jnp.swapaxes(w, 1, 2)))
        one = n_blocks == 1
        out = block(jax.tree_util.tree_map(lambda x: x[0], xs))[None] if one else jax.lax.map(jax.checkpoint(block), xs)
        out = jnp.moveaxis(out.reshape(n_blocks, d_out, node_block, c), 1, 3)
        return out.reshape(n_blocks * node_block, c, d_out)[:n]

    return contract(a, jnp.concatenate(weights, axis=1))


# ---------------------------------------------------------------- one-particle basis: edge messages
# The message of edge j → i is e3nn-jax's channel-wise tensor product of the sender's features
# with the edge harmonics, R(r_ij)-weighted per path and channel. e3nn-jax's generic
# ``tensor_product`` gathers per coefficient and materialises many (E, C, ·) arrays; written out as
# below, with the per-edge work in blocks (``aggregation.sum_messages``), it measured several times
# faster on CPU (benchmarks/README.md, MACE). Its output equals e3nn-jax's, in e3nn-jax's order.


class EdgePath(NamedTuple):
    """One path l1 ⊗ l2 → l3: rows ``src`` of h (2l1+1 of them), rows ``sh`` of Y (2l2+1),
    cg (2l1+1, 2l2+1, 2l3+1) float64 with e3nn-jax's normalisation."""

    src: slice
    sh: slice
    cg: np.ndarray


class SourceGroup(NamedTuple):
    """The paths that read one irrep of h: rows ``src`` of h (2l1+1), cg (d_sh, 2l1+1, R) float64
    mapping Y to the group's R output rows, path (R,) int: each row's path (for its weight)."""

    src: slice
    cg: np.ndarray
    path: np.ndarray


class EdgeProduct(NamedTuple):
    """Paths in e3nn-jax's (regrouped) output order, that output's irreps (multiplicity = paths
    per irrep, per channel), the paths grouped by the irrep of h they read, and ``order``: the
    rows of the groups' concatenated output in e3nn-jax's path order."""

    paths: tuple
    irreps_out: str
    groups: tuple
    order: np.ndarray


@functools.lru_cache(maxsize=None)
def edge_product(irreps_h: str, irreps_sh: str) -> EdgeProduct:
    """Paths of h ⊗ Y onto Y's irreps, for h and Y with multiplicity 1 per irrep (per channel),
    with coefficients read off e3nn-jax's ``tensor_product`` itself (so the two cannot differ)."""
    ir_h, ir_sh = e3nn.Irreps(irreps_h), e3nn.Irreps(irreps_sh)
    if any(mul != 1 for mul, _ in ir_h + ir_sh):
        raise ValueError(f"edge_product: expected multiplicity-1 irreps, got {ir_h} ⊗ {ir_sh}")

    def bilinear(x, y):
        with jax.ensure_compile_time_eval():  # constants, even when first called inside a trace
            return e3nn.tensor_product(
                e3nn.IrrepsArray(ir_h, x), e3nn.IrrepsArray(ir_sh, y), filter_ir_out=ir_sh, regroup_output=False
            )

    raw = bilinear(np.zeros(ir_h.dim), np.zeros(ir_sh.dim)).irreps  # one entry per path, regrouped order
    eye_h, eye_sh = np.eye(ir_h.dim), np.eye(ir_sh.dim)
    full = np.array([[np.asarray(bilinear(eye_h[a], eye_sh[b]).array, np.float64) for b in range(ir_sh.dim)]
                     for a in range(ir_h.dim)])  # (d_h, d_sh, raw.dim)
    paths = []
    for out in raw.slices():  # each path reads exactly one irrep of h and one of Y: find which
        block = [(s1, s2) for s1 in ir_h.slices() for s2 in ir_sh.slices() if np.abs(full[s1, s2, out]).max() > 0]
        if len(block) != 1:
            raise AssertionError(f"edge_product: path {out} reads {len(block)} input pairs")
        s1, s2 = block[0]
        paths.append(EdgePath(s1, s2, full[s1, s2, out]))
    groups, rows, start = [], [], np.cumsum([0] + [p.cg.shape[2] for p in paths])
    for src in ir_h.slices():
        members = [k for k, p in enumerate(paths) if p.src == src]
        if not members:
            continue
        cg = np.zeros((ir_sh.dim, src.stop - src.start, 0))
        for k in members:
            block = np.zeros((ir_sh.dim,) + paths[k].cg.shape[::2])
            block[paths[k].sh] = np.swapaxes(paths[k].cg, 0, 1)
            cg = np.concatenate([cg, block], axis=2)
            rows += range(start[k], start[k + 1])
        groups.append(SourceGroup(src, cg, np.repeat(members, [paths[k].cg.shape[2] for k in members])))
    return EdgeProduct(tuple(paths), str(raw.simplify()), tuple(groups), np.argsort(rows))


def edge_messages(h_j, sh, w, product: EdgeProduct):
    """Per-edge messages (E, Σ_paths (2l3+1), C), rows grouped by source irrep (``product.order``
    puts them in e3nn-jax's order): h_j (E, d_h, C) sender features, sh (E, d_sh) harmonics,
    w (E, paths, C) radial weights. One group of paths per irrep of h keeps the op count low."""
    out = []
    for g in product.groups:
        m = jnp.einsum("eb,bao->eao", sh, jnp.asarray(g.cg, sh.dtype))  # (E, 2l1+1, R): no channels
        term = jnp.einsum("ear,eac->erc", m, h_j[:, g.src])  # (E, R, C)
        out.append(term * w[:, g.path])
    return jnp.concatenate(out, axis=1)


def to_e3nn_layout(a, product: EdgeProduct):
    """(N, Σ_paths (2l3+1), C) summed messages (``edge_messages`` row order) → (N, irreps_out.dim)
    in e3nn-jax's mul-major layout."""
    n, c = a.shape[0], a.shape[-1]
    a = a[:, product.order]
    blocks, row = [], 0
    for mul, ir in e3nn.Irreps(product.irreps_out):
        block = a[:, row : row + mul * ir.dim].reshape(n, mul, ir.dim, c)
        blocks.append(jnp.swapaxes(block, 2, 3).reshape(n, mul * c * ir.dim))
        row += mul * ir.dim
    return jnp.concatenate(blocks, axis=1)
