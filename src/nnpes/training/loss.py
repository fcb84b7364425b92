"""The training loss over a padded batch.

    L = Σ_k c_k [ w_E ρ((E_k − E_k^ref)/N_k) + w_F/(3N_k) Σ_i ρ(F_ki − F_ki^ref) + w_S/9 Σ ρ(σ_k − σ_k^ref) ] / Σ_k c_k

with ρ(x) = x² (MSE) or 2·huber_δ(x) (equal to x² near 0), c_k = weight_k on real graphs and 0 on
padding graphs. Each term is also masked by its ``has_*`` label flag, so a structure without forces
adds only its energy term. ``energy_per_atom: false`` drops the 1/N_k on the energy error.
There is no trainable shift here: the model's ``offset`` is the only one.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import jraph
import optax

from nnpes import keys
from nnpes.graph import node_graph_index


def _rho(x, kind: str, delta: float):
    if kind == "huber":
        return 2.0 * optax.huber_loss(x, delta=delta)
    return jnp.square(x)


def loss_terms(pred: dict, graph: jraph.GraphsTuple, *, kind: str = "mse", delta: float = 0.01,
               energy_per_atom: bool = True) -> dict:
    """Per-graph terms (G,) before weights: ``energy``, ``forces``, ``stress``, and ``mask`` c_k.

    ``pred``: ``energy`` (G,) eV, ``forces`` (N,3) eV/Å, optionally ``stress`` (G,3,3) eV/Å³."""
    g = graph.globals
    n_graph = graph.n_node.shape[0]
    dtype = pred["energy"].dtype
    graph_mask = jraph.get_graph_padding_mask(graph).astype(dtype)
    node_mask = jraph.get_node_padding_mask(graph)
    n_atoms = jnp.maximum(graph.n_node, 1).astype(dtype)
    c = graph_mask * g[keys.WEIGHT].astype(dtype)

    de = pred["energy"] - g[keys.ENERGY].astype(dtype)
    if energy_per_atom:
        de = de / n_atoms
    e_term = _rho(de, kind, delta) * g[keys.HAS_ENERGY].astype(dtype)

    node_graph = node_graph_index(graph)
    df = pred["forces"] - graph.nodes[keys.FORCES].astype(dtype)
    df = jnp.where(node_mask[:, None], df, 0.0)
    f_node = jnp.sum(_rho(df, kind, delta), axis=-1)
    f_term = jax.ops.segment_sum(f_node, node_graph, n_graph) / (3.0 * n_atoms)
    f_term = f_term * g[keys.HAS_FORCES].astype(dtype)

    if "stress" in pred and keys.STRESS in g:
        ds = pred["stress"] - g[keys.STRESS].astype(dtype)
        s_term = jnp.sum(_rho(ds, kind, delta), axis=(-2, -1)) / 9.0 * g[keys.HAS_STRESS].astype(dtype)
    else:
        s_term = jnp.zeros(n_graph, dtype)
    return {"energy": e_term, "forces": f_term, "stress": s_term, "mask": c}


TERMS = ("energy", "forces", "stress")


def loss_sums(pred: dict, graph: jraph.GraphsTuple, weights, *, kind: str = "mse", delta: float = 0.01,
              energy_per_atom: bool = True):
    """({X: Σ_k c_k w_X ℓ_X,k for X in ``TERMS``}, Σ_k c_k): the numerators of the weighted loss
    terms (the loss's numerator is their sum) and the denominator of ``total_loss``. The one place
    the loss weights w_E, w_F, w_S are applied; a data-parallel step sums all of them over
    sub-batches first."""
    t = loss_terms(pred, graph, kind=kind, delta=delta, energy_per_atom=energy_per_atom)
    return {k: jnp.sum(t["mask"] * weights[k] * t[k]) for k in TERMS}, jnp.sum(t["mask"])


def mean_terms(nums: dict, den):
    """(loss, {X: w_X L_X}): the weighted mean loss and its energy/forces/stress parts (they add
    up to the loss), from ``loss_sums``."""
    terms = {k: mean_loss(v, den) for k, v in nums.items()}
    return sum(terms.values()), terms


def mean_loss(num, den):
    """The weighted mean Σ c_k ℓ_k / Σ c_k (an all-padding batch gives 0, not NaN)."""
    return num / jnp.maximum(den, 1e-12)


def total_loss(pred: dict, graph: jraph.GraphsTuple, weights, *, kind: str = "mse", delta: float = 0.01,
               energy_per_atom: bool = True):
    """Scalar loss (weighted mean over the real graphs of the batch). ``weights`` holds
    ``energy``/``forces``/``stress`` (floats or traced scalars, so a schedule does not recompile)."""
    return mean_terms(*loss_sums(pred, graph, weights, kind=kind, delta=delta, energy_per_atom=energy_per_atom))[0]


def reweight(graph: jraph.GraphsTuple, weight) -> jraph.GraphsTuple:
    """``graph`` with its per-structure weights c_k multiplied by ``weight`` (G,) (a committee
    member's bootstrap counts: every member sees the same padded batch, weighted its own way)."""
    g = graph.globals
    return graph._replace(globals={**g, keys.WEIGHT: g[keys.WEIGHT] * weight})


def error_sums(pred: dict, graph: jraph.GraphsTuple) -> dict:
    """Sums for epoch metrics (summed across batches on the host, then divided by the counts):
    energy per-atom and per-structure absolute/squared errors, force component errors, stress."""
    g = graph.globals
    dtype = pred["energy"].dtype
    graph_mask = jraph.get_graph_padding_mask(graph).astype(dtype)
    n_atoms = jnp.maximum(graph.n_node, 1).astype(dtype)
    he = graph_mask * g[keys.HAS_ENERGY].astype(dtype)
    de = pred["energy"] - g[keys.ENERGY].astype(dtype)
    hf_graph = graph_mask * g[keys.HAS_FORCES].astype(dtype)
    hf = hf_graph[node_graph_index(graph)] * jraph.get_node_padding_mask(graph).astype(dtype)
    df = (pred["forces"] - graph.nodes[keys.FORCES].astype(dtype)) * hf[:, None]
    out = {
        "e_n": jnp.sum(he),
        "e_abs_atom": jnp.sum(he * jnp.abs(de) / n_atoms),
        "e_sq_atom": jnp.sum(he * jnp.square(de / n_atoms)),
        "e_abs": jnp.sum(he * jnp.abs(de)),
        "e_sq": jnp.sum(he * jnp.square(de)),
        "f_n": 3.0 * jnp.sum(hf),
        "f_abs": jnp.sum(jnp.abs(df)),
        "f_sq": jnp.sum(jnp.square(df)),
    }
    if "stress" in pred:
        hs = graph_mask * g[keys.HAS_STRESS].astype(dtype)
        ds = (pred["stress"] - g[keys.STRESS].astype(dtype)) * hs[:, None, None]
        out.update(s_n=9.0 * jnp.sum(hs), s_abs=jnp.sum(jnp.abs(ds)), s_sq=jnp.sum(jnp.square(ds)))
    return out
