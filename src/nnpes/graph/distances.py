"""Interatomic distances of host graphs, per element pair: the shortest ones a training set holds
(recorded in the model card) and the pairs of new structures that come closer than those (a model
is extrapolating there; ``Potential.predict``, ``nnpes evaluate`` and ``nnpes md`` warn)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import jraph
import numpy as np
from ase.data import chemical_symbols

from nnpes import keys


def pair_name(z_a: int, z_b: int, elements: Sequence[str]) -> str:
    """"C-H"-style key of an element pair, in the order of the model's ``elements``."""
    a, b = chemical_symbols[int(z_a)], chemical_symbols[int(z_b)]
    order = {s: k for k, s in enumerate(elements)}
    return f"{a}-{b}" if order.get(a, 0) <= order.get(b, 0) else f"{b}-{a}"


def edge_lengths(graph: jraph.GraphsTuple) -> np.ndarray:
    """(E,) Å: |r_sender − r_receiver + shifts·cell| of an unpadded single-structure host graph."""
    pos = np.asarray(graph.nodes[keys.POSITIONS], np.float64)
    cell = np.asarray(graph.globals[keys.CELL], np.float64).reshape(3, 3)
    shifts = np.asarray(graph.edges[keys.SHIFTS], np.float64)
    return np.linalg.norm(pos[graph.senders] - pos[graph.receivers] + shifts @ cell, axis=1)


def shortest_distances(graphs: Sequence[jraph.GraphsTuple], elements: Sequence[str]) -> dict[str, float]:
    """Shortest distance (Å) of each element pair over ``graphs`` (built at the model's cutoff);
    pairs never within the cutoff are absent."""
    out: dict[str, float] = {}
    for g in graphs:
        if len(g.senders) == 0:
            continue
        numbers = np.asarray(g.nodes[keys.NUMBERS])
        d = edge_lengths(g)
        for (za, zb), dist in _min_per_pair(numbers[g.receivers], numbers[g.senders], d).items():
            name = pair_name(za, zb, elements)
            out[name] = min(out.get(name, np.inf), dist)
    # Rounded down: rounded to nearest, a training pair could sit just below its own table's value
    # and be warned about as extrapolation.
    return {k: math.floor(float(v) * 1e4) / 1e4 for k, v in sorted(out.items())}


def merge_shortest(tables: Sequence[dict[str, float] | None]) -> dict[str, float] | None:
    """Per pair, the shortest of several ``shortest_distances`` tables (models trained on
    different data); None where no table was recorded."""
    recorded = [t for t in tables if t]
    if not recorded:
        return None
    pairs = sorted({k for t in recorded for k in t})
    return {k: min(t[k] for t in recorded if k in t) for k in pairs}


def _min_per_pair(z_r, z_s, d) -> dict[tuple[int, int], float]:
    lo, hi = np.minimum(z_r, z_s), np.maximum(z_r, z_s)
    code = lo * 1000 + hi
    order = np.lexsort((d, code))
    first = np.r_[True, code[order][1:] != code[order][:-1]]
    return {(int(lo[k]), int(hi[k])): float(d[k]) for k in order[first]}


@dataclass(frozen=True)
class CloseContact:
    """Atoms ``i`` and ``j`` of structure ``structure`` are ``distance`` Å apart, closer than
    ``shortest`` Å, the shortest distance of their element ``pair`` in the training data
    (the cutoff for a pair the data never had within it)."""

    structure: int
    i: int
    j: int
    pair: str
    distance: float
    shortest: float
    seen: bool  # False: the data had no such pair within the cutoff (``shortest`` is the cutoff)


def close_contacts(graphs: Sequence[jraph.GraphsTuple], shortest: dict[str, float], elements: Sequence[str],
                   cutoff: float) -> list[CloseContact]:
    """The closest pair of each structure that comes closer than ``shortest`` allows (at most one
    per structure: the one furthest inside its bound, relative to it)."""
    from ase.data import atomic_numbers

    # bound[Z_i, Z_j] Å: vectorised over edges (predict runs this on every call).
    bound = np.full((119, 119), float(cutoff))
    for name, d in shortest.items():
        a, b = (atomic_numbers[s] for s in name.split("-"))
        bound[a, b] = bound[b, a] = d
    found = []
    for k, g in enumerate(graphs):
        if len(g.senders) == 0:
            continue
        numbers = np.asarray(g.nodes[keys.NUMBERS])
        z_r, z_s = numbers[g.receivers], numbers[g.senders]
        d = edge_lengths(g)
        ratio = d / bound[z_r, z_s]
        e = int(np.argmin(ratio))
        if ratio[e] < 1.0:
            i, j = sorted((int(g.receivers[e]), int(g.senders[e])))
            name = pair_name(z_r[e], z_s[e], elements)
            found.append(CloseContact(k, i, j, name, float(d[e]), float(bound[z_r[e], z_s[e]]), name in shortest))
    return found


def describe(contacts: Sequence[CloseContact], n_structures: int) -> str:
    """One warning line for ``contacts`` found among ``n_structures`` structures."""
    c = min(contacts, key=lambda c: c.distance / c.shortest)
    where = f"structure {c.structure}: " if n_structures > 1 else ""
    data = (f"the shortest {c.pair} distance in the training data is {c.shortest:.3f} Å" if c.seen else
            f"the training data have no {c.pair} pair within the cutoff ({c.shortest:g} Å)")
    more = f"; {len(contacts)} of {n_structures} structures have such a pair" if n_structures > 1 else ""
    return (f"{where}atoms {c.i} and {c.j} ({c.pair}) are {c.distance:.3f} Å apart, but {data}: "
            f"the model is extrapolating{more}")


class ShortDistanceWarning(UserWarning):
    """Two atoms closer than any such pair in the model's training data."""


def warn_close_contacts(graphs: Sequence[jraph.GraphsTuple], shortest: dict[str, float] | None,
                        elements: Sequence[str], cutoff: float, stacklevel: int = 2) -> list[CloseContact]:
    """One ``ShortDistanceWarning`` for all of ``graphs`` if any pair comes closer than ``shortest``
    (a model card's ``data.shortest_distances``; None: nothing recorded, nothing checked)."""
    if not shortest:
        return []
    contacts = close_contacts(graphs, shortest, elements, cutoff)
    if contacts:
        import warnings

        warnings.warn(describe(contacts, len(graphs)), ShortDistanceWarning, stacklevel=stacklevel)
    return contacts
