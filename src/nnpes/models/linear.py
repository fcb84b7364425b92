"""Per-element linear maps over channels, shared by the message-passing models.

A linear map whose weights depend on the atom's element (NequIP's self-connection, MACE's
self-connection and first-layer mix of A) is one GEMM on the one-hot-scaled features: row
[onehot_z · x] of length Z·C_in times a (Z·C_in, C_out) matrix. Gathering each atom's own
(C_in, C_out) matrix instead (e3nn-jax's indexed ``Linear``) moves an N × C_in × C_out array
through memory and scatters it back in the backward pass: on MACE's training step (4 elements,
one core) it took 79 ms of kernel time against 31 ms as a GEMM (benchmarks/README.md, "MACE
training step under 450 ms").
"""

from __future__ import annotations

import math

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp


def species_mix(x, onehot, w):
    """x (N, ..., C_in), onehot (N, Z), w (Z·C_in, C_out) → (N, ..., C_out): row n is
    x[n] @ w[z_n·C_in : (z_n + 1)·C_in] for the element z_n of atom n."""
    oh = onehot.reshape(onehot.shape[:1] + (1,) * (x.ndim - 2) + onehot.shape[1:])
    xz = (oh[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (-1,))
    return jnp.dot(xz, w)


class ElementLinear(nn.Module):
    """e3nn-jax's ``Linear(irreps_out, num_indexed_weights=Z, force_irreps_out=True)`` for inputs
    with at most one block per irrep: the same parameters (names, shapes (Z, mul_in, mul_out),
    initialiser) and the same result, computed with ``species_mix``. x: IrrepsArray (N, irreps),
    species (N,) int. An output irrep the input lacks is zero, as in e3nn-jax."""

    irreps_out: str  # a string: flax turns Irreps into tuples
    num_species: int

    @nn.compact
    def __call__(self, species, x: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
        ir_in, ir_out = x.irreps, e3nn.Irreps(self.irreps_out)
        if len({ir for _, ir in ir_in}) != len(ir_in):
            raise ValueError(f"ElementLinear: expected one block per irrep, got {ir_in}")
        onehot = jax.nn.one_hot(species, self.num_species, dtype=x.dtype)
        source = {ir: (k, mul, chunk) for k, ((mul, ir), chunk) in enumerate(zip(ir_in, x.chunks))}
        out = []
        for k_out, (mul_out, ir) in enumerate(ir_out):
            if ir not in source:
                out.append(jnp.zeros((x.shape[0], mul_out * ir.dim), x.dtype))
                continue
            k_in, mul_in, chunk = source[ir]
            name = f"w[{k_in},{k_out}] {mul_in}x{ir},{mul_out}x{ir}"
            w = self.param(name, nn.initializers.normal(1.0), (self.num_species, mul_in, mul_out), x.dtype)
            # e3nn's path normalisation: weights of unit variance, output scaled by 1/sqrt(fan-in)
            y = species_mix(jnp.swapaxes(chunk, 1, 2), onehot, w.reshape(-1, mul_out)) / math.sqrt(mul_in)
            out.append(jnp.swapaxes(y, 1, 2).reshape(y.shape[0], -1))
        return e3nn.IrrepsArray(ir_out, jnp.concatenate(out, axis=1))
