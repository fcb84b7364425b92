"""Committee disagreement measures (pure jnp, jit- and vmap-friendly).

Inputs are the K members' predictions on one padded batch:
    energies (K, G) eV, forces (K, N, 3) eV/Å, node_mask (N,), node_graph (N,), n_node (G,).

Every "std" here is a standard deviation over the K members (population form, 1/K), never a
variance. Definitions follow DP-GEN:
    force_std_i      = sqrt( mean_k |F_k,i - F̄_i|² )                      (N,)  eV/Å
    max_force_std_g  = max_{i in g} force_std_i            (ε_F,max)        (G,)  eV/Å
    rel_force_std_i  = force_std_i / (|F̄_i| + ν)                           (N,)  1
    energy_std_g     = std_k(E_k,g) / N_g                                   (G,)  eV/atom
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MEASURES = ("max_force_std", "max_rel_force_std", "energy_std_per_atom")


def force_std(forces: jnp.ndarray) -> jnp.ndarray:
    """(K, N, 3) eV/Å → (N,) eV/Å: root-mean-square deviation of each atom's force vector."""
    dev = forces - jnp.mean(forces, axis=0)
    return jnp.sqrt(jnp.mean(jnp.sum(dev * dev, axis=-1), axis=0))


def committee_measures(energies, forces, node_mask, node_graph, n_node, nu: float = 1.0) -> dict:
    """All disagreement measures for a padded batch; padding nodes/graphs give 0.

    Returns per-graph ``max_force_std``, ``max_rel_force_std``, ``energy_std_per_atom`` (G,),
    per-atom ``force_std`` and ``rel_force_std`` (N,), and the committee means ``energy`` (G,),
    ``forces`` (N, 3). ``nu`` (eV/Å) keeps the relative measure finite where |F̄| → 0."""
    n_graph = n_node.shape[0]
    mean_f = jnp.mean(forces, axis=0)
    f_std = jnp.where(node_mask, force_std(forces), 0.0)
    rel = f_std / (jnp.linalg.norm(mean_f, axis=-1) + nu)
    # max over an empty (padding) graph is -inf from segment_max; clamp to 0.
    seg_max = lambda x: jnp.maximum(jax.ops.segment_max(x, node_graph, n_graph), 0.0)
    atoms = jnp.maximum(n_node, 1).astype(energies.dtype)
    return {
        "energy": jnp.mean(energies, axis=0),
        "forces": mean_f,
        "force_std": f_std,
        "rel_force_std": rel,
        "max_force_std": seg_max(f_std),
        "max_rel_force_std": seg_max(rel),
        "energy_std_per_atom": jnp.std(energies, axis=0) / atoms,
    }


def calibrate_scale(predicted_std, errors) -> float:
    """Scale s such that s·σ best matches observed errors, by maximum likelihood under a Gaussian
    error model e ~ N(0, (s σ)²): s² = mean(e² / σ²). Both arrays same shape, same unit."""
    import numpy as np

    predicted_std = np.asarray(predicted_std, np.float64).ravel()
    errors = np.asarray(errors, np.float64).ravel()
    ok = predicted_std > 0
    if not ok.any():
        raise ValueError("calibrate_scale: every predicted standard deviation is zero")
    return float(np.sqrt(np.mean(np.square(errors[ok] / predicted_std[ok]))))
