"""MACE's symmetric contraction: the product basis B from the one-particle basis A (MACE eq. 10-11).

For one node i and one channel k, A_ik is a vector of dimension d carrying the irreps
``0e + 1o + 2e + ...`` (one copy of each). The ν-body product basis is the ν-th symmetric power of
A reduced onto output irreps L:

    B_ikLM = Σ_ν Σ_η W^ν_{Z_i, η, k} Σ_{a_1..a_ν} C^ν_{η, LM; a_1..a_ν} A_ik,a_1 ··· A_ik,a_ν

C^ν (the generalised Clebsch–Gordan coupling) comes once from e3nn-jax's
``reduced_symmetric_tensor_product_basis`` (float64 numpy, cached per irreps and ν). As C^ν is
symmetric in a_1..a_ν, the sum runs over monomials a_1 ≤ ... ≤ a_ν only, each weighted by its
number of orderings, and monomials whose coupling vanishes for every kept output are dropped
(parity and angular-momentum selection rules remove most). The device work per order is one
gather-and-multiply of A (the monomials) and one einsum with the coupling and the per-element
weights gathered once per node. Every monomial has degree ν ≥ 1, so A = 0 (a padding or isolated
node) gives B = 0 exactly.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import e3nn_jax as e3nn
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


def symmetric_contraction(a, weights, couplings):
    """B (N, C, D) from A (N, C, d) and per-node weights, one entry per order ν = 1, 2, ...:
    weights[ν-1] (N, Q_ν, C) (the node's element's weights, gathered once per node),
    couplings[ν-1] a ``Coupling``. Orders without paths (Q_ν = 0) are skipped.

    The monomials are gathered along a leading axis (rows of N·C contiguous values): on CPU their
    gradient (a scatter-add of whole rows) is ~1.5× faster than gathering along the last axis."""
    rows = jnp.moveaxis(a, -1, 0)  # (d, N, C)
    out = 0.0
    for w, c in zip(weights, couplings):
        if c.coefficients.shape[1] == 0:
            continue
        monomial = functools.reduce(lambda x, y: x * y, [rows[c.monomials[:, k]] for k in range(c.monomials.shape[1])])
        out = out + jnp.einsum("pnk,pqD,nqk->nkD", monomial, jnp.asarray(c.coefficients, a.dtype), w)
    return out
