"""DP-GEN-style trust levels and diverse candidate selection.

A structure whose disagreement ε (e.g. ``max_force_std``, eV/Å) is below ``lo`` is *accurate*,
between ``lo`` and ``hi`` a *candidate*, at or above ``hi`` *failed* (the model is lost there and the
structure is probably unphysical). At most ``max_per_iteration`` candidates go to the oracle, chosen
for diversity rather than as the top of the ε list, which would be many near-copies of one event.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from nnpes.graph.neighbors import neighbor_list

ACCURATE, CANDIDATE, FAILED = 0, 1, 2
NAMES = {ACCURATE: "accurate", CANDIDATE: "candidate", FAILED: "failed"}


def classify(eps: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(M,) disagreement → (M,) int codes ACCURATE / CANDIDATE / FAILED."""
    if not lo < hi:
        raise ValueError(f"trust levels need lo < hi, got lo={lo}, hi={hi}")
    eps = np.asarray(eps, np.float64)
    if not np.all(np.isfinite(eps)):
        # A NaN disagreement is a model that blew up: count it as failed, never as accurate.
        eps = np.where(np.isfinite(eps), eps, np.inf)
    return np.where(eps < lo, ACCURATE, np.where(eps < hi, CANDIDATE, FAILED))


def fractions(codes: np.ndarray) -> dict:
    n = max(len(codes), 1)
    return {NAMES[c]: float(np.sum(codes == c)) / n for c in NAMES}


def structure_descriptor(atoms: Atoms, elements: Sequence[str], cutoff: float, n_bins: int = 24,
                         width: float = 0.15) -> np.ndarray:
    """Permutation-, rotation- and translation-invariant fingerprint: for each element pair, a
    Gaussian-smoothed histogram (width Å) of neighbour distances up to ``cutoff`` Å, per atom."""
    index = {s: k for k, s in enumerate(elements)}
    n_el = len(elements)
    nl = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    vec = atoms.positions[nl.senders] - atoms.positions[nl.receivers] + nl.shifts @ atoms.cell.array
    r = np.linalg.norm(vec, axis=-1)
    species = np.array([index[s] for s in atoms.get_chemical_symbols()])
    a, b = species[nl.receivers], species[nl.senders]
    pair = np.minimum(a, b) * n_el + np.maximum(a, b)
    centres = np.linspace(0.0, cutoff, n_bins)
    g = np.exp(-0.5 * ((r[:, None] - centres[None]) / width) ** 2)
    out = np.zeros((n_el * n_el, n_bins))
    np.add.at(out, pair, g)
    return (out / max(len(atoms), 1)).ravel()


def farthest_point(descriptors: np.ndarray, k: int, first: int = 0) -> np.ndarray:
    """Greedy farthest-point sampling of ``k`` rows (Euclidean), starting at row ``first``."""
    x = np.asarray(descriptors, np.float64)
    k = min(k, len(x))
    if k <= 0:
        return np.zeros(0, int)
    chosen = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return np.asarray(chosen)


def select(eps: np.ndarray, lo: float, hi: float, max_per_iteration: int, *, method: str = "fps",
           descriptors: np.ndarray | None = None, cv: np.ndarray | None = None, n_bins: int = 10,
           seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_per_iteration`` candidates (lo ≤ ε < hi).

    method: ``fps`` farthest-point in ``descriptors`` (M, D) starting from the most uncertain;
    ``cv_bins`` one per bin of the collective variable ``cv`` (M,) or (M, D) (round-robin over bins,
    most uncertain first within a bin); ``top`` the largest ε; ``random`` uniform (a baseline)."""
    codes = classify(eps, lo, hi)
    cand = np.flatnonzero(codes == CANDIDATE)
    eps = np.asarray(eps, np.float64)
    if len(cand) <= max_per_iteration:
        return cand
    if method == "top":
        return cand[np.argsort(-eps[cand])[:max_per_iteration]]
    if method == "random":
        return np.sort(np.random.default_rng(seed).choice(cand, max_per_iteration, replace=False))
    if method == "fps":
        if descriptors is None:
            raise ValueError("select(method='fps') needs descriptors")
        first = int(np.argmax(eps[cand]))
        return cand[farthest_point(np.asarray(descriptors)[cand], max_per_iteration, first)]
    if method == "cv_bins":
        if cv is None:
            raise ValueError("select(method='cv_bins') needs collective-variable values")
        c = np.asarray(cv, np.float64).reshape(len(eps), -1)[cand]
        lo_c, hi_c = c.min(0), c.max(0)
        span = np.where(hi_c > lo_c, hi_c - lo_c, 1.0)
        b = np.minimum(((c - lo_c) / span * n_bins).astype(int), n_bins - 1)
        bin_id = np.ravel_multi_index(b.T, (n_bins,) * c.shape[1])
        queues = [list(cand[bin_id == u][np.argsort(-eps[cand][bin_id == u])]) for u in np.unique(bin_id)]
        out = []
        while len(out) < max_per_iteration:
            for q in queues:
                if q and len(out) < max_per_iteration:
                    out.append(q.pop(0))
        return np.asarray(out)
    raise ValueError(f"selection method {method!r}: expected fps, cv_bins, top or random")
