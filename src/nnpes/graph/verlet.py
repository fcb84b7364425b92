"""On-device Verlet neighbour lists for MD, in jax-md's conventions.

    neighbor_fn = neighbor_list_fn(cell, pbc, cutoff, skin=0.5, capacity_multiplier=1.25)
    nbrs = neighbor_fn.allocate(R)        # host: sizes the buffers, then builds on device
    nbrs = neighbor_fn.update(R, nbrs)    # jittable; same as nbrs.update(R)
    if nbrs.did_buffer_overflow: nbrs = neighbor_fn.allocate(R_before, previous=nbrs)

Edges follow ``nnpes.graph.neighbors``: (receiver i, sender j, integer shift S) with
vector_ij = R[j] - R[i] + S @ cell (Å), full list, sorted by receiver. The list holds every pair
within cutoff + skin of the reference positions, so it stays valid while no atom has moved more
than skin/2 since; ``update`` measures that displacement and rebuilds on device only then (a
``lax.cond``).

The rebuild is an O(N) cell list with fixed shapes, laid out on the host at ``allocate``:
- Space is cut along the (fractional) box axes into bins at least cutoff + skin wide, so a
  neighbour lies at most k bins away, with k = 1 for ordinary boxes and k = ceil((cutoff+skin)/width)
  when the cell is thinner than the cutoff (then there is one bin and the k nearest images of it).
  Every (bin offset) stands for a distinct (bin, lattice shift), so no pair is counted twice and
  triclinic and small cells need no special case.
- Non-periodic directions (molecules, slabs) are covered by the atoms' bounding box at allocate
  time (plus a margin); atoms that leave it are clamped into the edge bins, which is still exact
  because clamping keeps the order of the bins.
- Each bin holds at most ``bin_capacity`` atoms and the list at most ``capacity`` edges (padding
  edges join the padding atom N to itself). Exceeding either sets ``did_buffer_overflow`` (sticky
  until reallocation) and records the counts that were needed, so ``allocate(..., previous=nbrs)``
  sizes the new buffers to fit. A list that overflowed is never silently used: nnpes' MD loop redoes
  the block of steps with the new list.
Capacities are rounded up to a few bucket sizes so reallocations reuse compiled code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from nnpes.graph.neighbors import check_extent, neighbor_list as host_neighbor_list
from nnpes.graph.pairs import reverse_pairs

_MAX_CANDIDATE_BLOCK = 1 << 21  # candidate pairs processed at once by a rebuild (memory bound)


@dataclass(frozen=True)
class CellLayout:
    """Static description of the bins (hashable: equal layouts share compiled code).

    box: (3,3) Å rows, the periodic cell vectors plus, for non-periodic directions, vectors
    spanning the bounding box; origin (3,) Å; n_bins, reach (3,) ints; capacities ints."""

    n_atoms: int
    box: tuple
    origin: tuple
    pbc: tuple
    n_bins: tuple
    reach: tuple
    bin_capacity: int
    capacity: int
    cutoff: float  # Å, cutoff + skin: the list radius
    skin: float  # Å
    # Edges within the model's cutoff are compacted into this many slots before the model runs
    # (the list's skin shell would otherwise cost ~30 % more model work); checked by ``update``.
    model_cutoff: float = 0.0
    model_capacity: int = 0
    # Find each entry's reverse at every build (``list_reverse``): only for models that pair edges
    # (the sort is ~half a rebuild's time, waste for the others).
    reverse: bool = False

    @property
    def offsets(self) -> np.ndarray:
        """(M, 3) int32: bin offsets searched around each atom's bin."""
        ranges = [np.arange(-k, k + 1) for k in self.reach]
        return np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3).astype(np.int32)


@flax.struct.dataclass
class VerletList:
    """A padded full neighbour list on device (a PyTree; jit and scan carry it).

    receivers, senders (capacity,) int32 (padding: the index N); shifts (capacity, 3) int32;
    reference_positions (N, 3) Å, the positions the list was built from; box (3,3) Å, the box
    then (the cell's periodic rows; it follows the cell in variable-cell MD);
    did_buffer_overflow () bool; n_pairs () int32, pairs found at the last build;
    max_pairs / max_bin_count / max_model_pairs () int32, the largest counts ever needed (list,
    bin, pairs within the model cutoff at an updated position), for reallocation; reverse
    (capacity,) int32, the entry of each pair's other direction (j ← i, −S for i ← j, S; padding:
    itself) and paired () bool, every real entry has one (``list_reverse``, at each build of a
    layout with ``reverse``; otherwise the identity and False)."""

    receivers: jnp.ndarray
    senders: jnp.ndarray
    shifts: jnp.ndarray
    reference_positions: jnp.ndarray
    box: jnp.ndarray
    did_buffer_overflow: jnp.ndarray
    n_pairs: jnp.ndarray
    max_pairs: jnp.ndarray
    max_bin_count: jnp.ndarray
    max_model_pairs: jnp.ndarray
    reverse: jnp.ndarray
    paired: jnp.ndarray
    layout: CellLayout = flax.struct.field(pytree_node=False)

    def update(self, positions, box=None) -> "VerletList":
        return update_neighbor_list(positions, self, box)

    @property
    def capacity(self) -> int:
        return self.layout.capacity


class NeighborFn(NamedTuple):
    """jax-md style pair: ``allocate(R, extra_capacity=0, previous=None)`` on the host and
    ``update(R, nbrs)`` (jittable)."""

    allocate: Callable
    update: Callable


def bucket_size(n: int) -> int:
    """Round up to 8..15 × 2^k (at most 12.5 % more), so capacities come in few sizes."""
    n = max(int(n), 8)
    step = 1 << max(0, n.bit_length() - 4)
    return -(-n // step) * step


def _widths(box: np.ndarray) -> np.ndarray:
    """(3,) Å: distance between opposite faces of the parallelepiped spanned by ``box`` rows."""
    volume = abs(np.linalg.det(box))
    return np.array([volume / np.linalg.norm(np.cross(box[(d + 1) % 3], box[(d + 2) % 3])) for d in range(3)])


def _make_box(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, margin: float):
    """Box rows and origin covering the periodic cell and the atoms' extent elsewhere."""
    box = np.zeros((3, 3))
    periodic = np.flatnonzero(pbc)
    box[periodic] = cell[periodic]
    # Complete with orthonormal vectors perpendicular to the periodic ones, so the fractional
    # coordinate along a non-periodic direction is a plain Cartesian projection.
    basis = [cell[d] / np.linalg.norm(cell[d]) for d in periodic]
    q, _ = np.linalg.qr(np.array(basis + list(np.eye(3))).T) if basis else (np.eye(3), None)
    free = [q[:, k] for k in range(len(periodic), 3)]
    origin = np.zeros(3)
    for d, n in zip(np.flatnonzero(~pbc), free):
        proj = positions @ n if len(positions) else np.zeros(1)
        lo, hi = proj.min() - margin, proj.max() + margin
        box[d] = (hi - lo) * n
        origin += lo * n
    return box, origin


# RMS thermal displacement per Cartesian component at 300 K, Å: Debye–Waller factors of solids at
# room temperature give 0.05–0.12 Å (Cu 0.085). Classically it grows as sqrt(T) and does not depend
# on the mass (u² = kT / spring constant).
THERMAL_RMS_300K = 0.1
_THERMAL_COPIES = 3  # rattled copies whose counts size the buffers (with the structure itself)


def thermal_copies(positions: np.ndarray, temperature: float, n_copies: int = _THERMAL_COPIES, seed: int = 0):
    """``positions`` (N,3) Å and ``n_copies`` copies displaced by Gaussian thermal noise at
    ``temperature`` K (σ = THERMAL_RMS_300K·sqrt(T/300 K) per component): the configurations MD
    at that temperature visits. Their neighbour counts size the buffers, so a crystal whose shells
    or lattice planes sit just outside a cutoff or a bin face gets room for them (issue 13 §1)."""
    if temperature <= 0:
        return [positions]
    sigma = THERMAL_RMS_300K * math.sqrt(temperature / 300.0)
    rng = np.random.default_rng(seed)
    return [positions] + [positions + rng.normal(0.0, sigma, positions.shape) for _ in range(n_copies)]


def _layout(positions, cell, pbc, list_cutoff, skin, multiplier, capacity_floor=0, bin_floor=0, extra=0,
            model_cutoff=0.0, model_floor=0, temperature=300.0, cell_slack=0.0, reverse=False):
    n = len(positions)
    check_extent(positions, pbc)  # before the bins: a huge span gives an impossible number of them
    box, origin = _make_box(positions, cell, pbc, margin=max(skin, 1.0))  # never a flat box (planar molecules)
    # Variable cell: bins and reach valid down to widths (1 - cell_slack) of today's.
    widths = _widths(box) * np.where(pbc, 1.0 - cell_slack, 1.0)
    n_bins = np.maximum(1, np.floor(widths / list_cutoff)).astype(int)
    # A dilute system does not need more bins than atoms: coarsen the finest direction.
    while n_bins.prod() > max(8 * n, 27) and n_bins.max() > 1:
        n_bins[np.argmax(n_bins)] -= 1
    reach = np.where(pbc, np.ceil(list_cutoff * n_bins / widths - 1e-9), np.minimum(n_bins - 1, 1)).astype(int)
    reach = np.maximum(reach, np.where(pbc, 1, 0))
    max_bin = pairs = inside = 0
    for x in thermal_copies(positions, temperature) if n else [positions]:
        frac = (x - origin) @ np.linalg.inv(box)
        frac = np.where(pbc, frac - np.floor(frac), frac)
        b = np.clip(np.floor(frac * n_bins).astype(int), 0, n_bins - 1)
        counts = np.bincount(np.ravel_multi_index(b.T, n_bins), minlength=int(n_bins.prod())) if n else np.zeros(1, int)
        nl = host_neighbor_list(x, cell, pbc, list_cutoff)
        vec = x[nl.senders] - x[nl.receivers] + nl.shifts @ cell
        max_bin, pairs = max(max_bin, int(counts.max())), max(pairs, len(nl.senders))
        inside = max(inside, int(np.sum(np.sum(vec * vec, -1) < model_cutoff**2)))
    # Head room (capacity_multiplier) on top of the thermal counts: a bin's count jumps when a
    # lattice plane crosses its face, and counts within a cutoff fluctuate by a few % in solids
    # and liquids.
    bin_capacity = min(max(n, 1), bucket_size(math.ceil(max(max_bin, bin_floor) * multiplier)))
    capacity = bucket_size(math.ceil(max(pairs, capacity_floor) * multiplier) + int(extra))
    model_capacity = min(capacity, bucket_size(math.ceil(max(inside, model_floor) * multiplier) + int(extra)))
    return CellLayout(
        n_atoms=n, box=tuple(map(tuple, box.tolist())), origin=tuple(origin.tolist()),
        pbc=tuple(bool(p) for p in pbc), n_bins=tuple(int(x) for x in n_bins),
        reach=tuple(int(x) for x in reach), bin_capacity=int(bin_capacity), capacity=int(capacity),
        cutoff=float(list_cutoff), skin=float(skin), model_cutoff=float(model_cutoff),
        model_capacity=int(model_capacity), reverse=bool(reverse),
    )


def _bin_atoms(positions, layout: CellLayout, box):
    """Each atom's bin (N,3), lattice image (N,3), home-cell position (N,3); atoms per bin
    (n_bins,) and the bin table (n_bins, bin_capacity) of atom indices (n = empty)."""
    n, pbc, n_bins = layout.n_atoms, np.array(layout.pbc), np.array(layout.n_bins)
    frac = (positions - jnp.asarray(layout.origin, positions.dtype)) @ jnp.linalg.inv(box)
    image = jnp.where(pbc, jnp.floor(frac), 0.0)
    wrapped = positions - image @ box  # in the home cell along periodic directions
    b = jnp.clip(jnp.floor((frac - image) * n_bins).astype(jnp.int32), 0, n_bins - 1)
    flat = (b[:, 0] * n_bins[1] + b[:, 1]) * n_bins[2] + b[:, 2]
    total_bins = int(n_bins.prod())
    order = jnp.argsort(flat, stable=True)
    counts = jnp.bincount(flat, length=total_bins)
    starts = jnp.cumsum(counts) - counts
    rank = jnp.arange(n) - starts[flat[order]]
    cell_atoms = jnp.full((total_bins, layout.bin_capacity), n, jnp.int32)
    cell_atoms = cell_atoms.at[flat[order], rank].set(order.astype(jnp.int32), mode="drop")
    return b, image, wrapped, counts, cell_atoms


def _neighbour_bins(bins, offs, layout: CellLayout):
    """bins + offs (..., 3) → flat neighbour bin, bin-image shift (..., 3), validity."""
    pbc, n_bins = np.array(layout.pbc), np.array(layout.n_bins)
    nb = bins + offs
    shift = jnp.where(pbc, jnp.floor_divide(nb, n_bins), 0)
    nb = nb - shift * n_bins
    valid = jnp.all((nb >= 0) & (nb < n_bins), -1)
    nb = jnp.clip(nb, 0, n_bins - 1)
    return (nb[..., 0] * n_bins[1] + nb[..., 1]) * n_bins[2] + nb[..., 2], shift, valid


def _box_too_small(box, layout: CellLayout):
    """() bool: along some periodic axis the bins searched (reach × width/n_bins) no longer span
    the list radius: the cell shrank below what the layout was allocated for (variable cell)."""
    volume = jnp.abs(jnp.linalg.det(box))
    spans = [volume / jnp.linalg.norm(jnp.cross(box[(d + 1) % 3], box[(d + 2) % 3])) * layout.reach[d] / layout.n_bins[d]
             for d in range(3) if layout.pbc[d]]
    return jnp.any(jnp.stack(spans) < layout.cutoff * (1 - 1e-9)) if spans else jnp.zeros((), bool)


def list_reverse(receivers, senders, shifts, n_atoms: int):
    """((capacity,) int32, () bool): for each entry (i ← j, S) the index of (j ← i, −S), padding
    (receiver ``n_atoms``) mapped to itself, and whether every real entry found its partner
    (``graph.pairs.reverse_pairs`` on the shifts). One integer sort per build, so the model's
    per-pair radial MLP (``nequip_ops``) needs no sort in every MD step: the slots' pairs follow
    from this (``md.functions.slot_pairs``)."""
    cap = receivers.shape[0]
    real = receivers < n_atoms
    first, second, paired = reverse_pairs(receivers, senders, shifts, real)
    both_real = real[first] & real[second]
    reverse = jnp.arange(cap, dtype=jnp.int32)
    reverse = reverse.at[first].set(jnp.where(both_real, second, first)).at[second].set(jnp.where(both_real, first, second))
    return reverse, paired


def build_neighbor_list(positions, layout: CellLayout, box=None) -> VerletList:
    """Rebuild the list from scratch at ``positions`` (N,3) Å with the bins of ``layout`` in
    ``box`` (3,3) Å (default: the layout's; variable-cell MD passes the current cell) (jittable)."""
    dtype, n = positions.dtype, layout.n_atoms
    box = jnp.asarray(layout.box if box is None else box, dtype)
    offsets = layout.offsets
    m, cap = len(offsets), layout.bin_capacity
    b, image, wrapped, counts, cell_atoms = _bin_atoms(positions, layout, box)
    wrapped_pad = jnp.concatenate([wrapped, jnp.zeros((1, 3), dtype)])
    r2 = layout.cutoff**2

    def candidates(i):
        nb, shift, valid = _neighbour_bins(b[i], offsets, layout)
        j = cell_atoms[nb]  # (M, C)
        vec = wrapped_pad[j] + (shift.astype(dtype) @ box)[:, None, :] - wrapped[i]
        d2 = jnp.sum(vec * vec, -1)
        self_pair = (j == i) & jnp.all(shift == 0, -1)[:, None]
        return (j < n) & valid[:, None] & (d2 < r2) & ~self_pair

    batch = max(1, min(n, _MAX_CANDIDATE_BLOCK // (m * cap)))
    if batch == n:
        mask = jax.vmap(candidates)(jnp.arange(n)).reshape(-1)
    else:  # bound the memory of large systems: blocks of atoms, one after another
        mask = jax.lax.map(candidates, jnp.arange(n), batch_size=batch).reshape(-1)
    n_pairs = jnp.sum(mask, dtype=jnp.int32)
    (idx,) = jnp.nonzero(mask, size=layout.capacity, fill_value=mask.shape[0])
    real = idx < mask.shape[0]
    idx = jnp.where(real, idx, 0)
    i = (idx // (m * cap)).astype(jnp.int32)
    nb, shift, _ = _neighbour_bins(b[i], jnp.asarray(offsets)[(idx // cap) % m], layout)
    j = cell_atoms[nb, idx % cap]
    # Bin shifts refer to wrapped positions; shifts in the list refer to the positions given.
    shifts = shift + (image[i] - image[jnp.minimum(j, n - 1)]).astype(jnp.int32)
    max_bin = jnp.max(counts).astype(jnp.int32)
    receivers, senders = jnp.where(real, i, n), jnp.where(real, j, n)
    shifts = jnp.where(real[:, None], shifts, 0).astype(jnp.int32)
    if layout.reverse:
        reverse, paired = list_reverse(receivers, senders, shifts, n)
    else:
        reverse, paired = jnp.arange(layout.capacity, dtype=jnp.int32), jnp.zeros((), bool)
    return VerletList(
        receivers=receivers, senders=senders, shifts=shifts, reverse=reverse, paired=paired,
        reference_positions=positions, box=box,
        did_buffer_overflow=(n_pairs > layout.capacity) | (max_bin > cap) | _box_too_small(box, layout),
        n_pairs=n_pairs, max_pairs=n_pairs, max_bin_count=max_bin, max_model_pairs=jnp.zeros((), jnp.int32),
        layout=layout,
    )


# One compiled build per (layout, dtype) for the whole process, shared by every neighbor_fn.
_build = jax.jit(build_neighbor_list, static_argnums=1)


def model_pair_mask(positions, cell, nbrs: VerletList):
    """(capacity,) bool: list edges within the model cutoff at ``positions`` (padding False)."""
    n = nbrs.layout.n_atoms
    vec = positions[jnp.minimum(nbrs.senders, n - 1)] - positions[jnp.minimum(nbrs.receivers, n - 1)]
    vec = vec + nbrs.shifts.astype(positions.dtype) @ cell
    return (nbrs.receivers < n) & (jnp.sum(vec * vec, -1) < nbrs.layout.model_cutoff**2)


def update_neighbor_list(positions, nbrs: VerletList, box=None) -> VerletList:
    """Rebuild only if some atom moved more than skin/2 since the last build (jitted; compiled
    once per layout); also flags an overflow if the pairs within the model cutoff at
    ``positions`` exceed their slots. ``box`` (3,3) Å: the current cell of variable-cell MD
    (positions and cell deformed together); then displacements are measured at fixed fractional
    coordinates and the threshold shrinks with the cell's smallest stretch since the build."""
    # One call signature for the jit cache however this is called (2 or 3 arguments, keywords).
    return _update_jit(positions, nbrs, box)


# Jitted once at module level, so eager calls from Python (a custom MD loop calling
# ``neighbor_fn.update`` between jitted force calls) reuse one compiled program per layout and
# dtype. Unjitted, the ``lax.cond`` inside compiled anew on every eager call and kept the code:
# the process's memory maps grew until LLVM failed (issue 13 §0). Called inside jit, it inlines.
@jax.jit
def _update_jit(positions, nbrs: VerletList, box) -> VerletList:
    positions = jnp.asarray(positions)
    nbrs = _update(positions, nbrs, box)
    if nbrs.layout.model_cutoff > 0:
        # The box's periodic rows are the cell's; shifts are zero along the others.
        cell = (nbrs.box if box is None else jnp.asarray(box)).astype(nbrs.reference_positions.dtype)
        inside = jnp.sum(model_pair_mask(positions.astype(cell.dtype), cell, nbrs), dtype=jnp.int32)
        nbrs = nbrs.replace(
            did_buffer_overflow=nbrs.did_buffer_overflow | (inside > nbrs.layout.model_capacity),
            max_model_pairs=jnp.maximum(nbrs.max_model_pairs, inside),
        )
    return nbrs


def _update(positions, nbrs: VerletList, box=None) -> VerletList:
    if box is None:
        disp = positions - nbrs.reference_positions
        threshold = 0.5 * nbrs.layout.skin
    else:
        # A pair left out at the build was > list radius apart in the old cell. Mapped back to it
        # (same fractional coordinates) atoms moved by disp; the cell since stretched every length
        # by at least s (smallest singular value of the deformation), so the pair is still beyond
        # the model cutoff while s·(radius − 2·max disp) > cutoff.
        box = jnp.asarray(box, nbrs.box.dtype)
        disp = positions @ (jnp.linalg.inv(box) @ nbrs.box) - nbrs.reference_positions
        stretch = jnp.linalg.svd(jnp.linalg.inv(nbrs.box) @ box, compute_uv=False)[-1]
        guaranteed = nbrs.layout.model_cutoff or nbrs.layout.cutoff - nbrs.layout.skin
        threshold = 0.5 * (nbrs.layout.cutoff - guaranteed / stretch)
    moved = jnp.max(jnp.sum(disp * disp, -1)) > jnp.maximum(threshold, 0.0) ** 2

    def rebuild(_):
        new = build_neighbor_list(positions.astype(nbrs.reference_positions.dtype), nbrs.layout, box)
        return new.replace(
            did_buffer_overflow=new.did_buffer_overflow | nbrs.did_buffer_overflow,
            max_pairs=jnp.maximum(new.max_pairs, nbrs.max_pairs),
            max_bin_count=jnp.maximum(new.max_bin_count, nbrs.max_bin_count),
            max_model_pairs=nbrs.max_model_pairs,
        )

    return jax.lax.cond(moved, rebuild, lambda _: nbrs, None)


def neighbor_list_fn(cell, pbc, cutoff: float, *, skin: float = 0.5, capacity_multiplier: float = 1.25,
                     dtype=jnp.float32, temperature: float = 300.0, variable_cell: bool = False,
                     reverse: bool = False) -> NeighborFn:
    """Neighbour-list functions for a fixed cell (3,3) Å and pbc; pairs within ``cutoff`` Å are
    guaranteed while no atom moved more than ``skin``/2 Å since the last build.

    Buffers are sized at ``allocate`` for MD at ``temperature`` K: ``capacity_multiplier`` head
    room over the largest counts of the structure and of thermally rattled copies of it
    (``thermal_copies``). After an overflow, ``allocate(R, previous=nbrs)`` gives the counts that
    were needed the head room twice (1.25² ≈ 1.56×), so a second overflow is unlikely.

    ``variable_cell`` (NPT): ``update(R, nbrs, box=cell)`` follows the cell; the bins stay valid
    while the cell's widths are above 90 % of those at allocation (else the overflow flag is set
    and ``allocate(R, previous=nbrs, cell=cell)`` lays them out for the new cell).

    ``reverse``: every build also finds each entry's reverse (``VerletList.reverse``), which a
    model that pairs edges then takes instead of sorting in every step (``md_functions`` sets it)."""
    pbc = np.broadcast_to(np.asarray(pbc, bool), (3,)).copy()
    cell0 = np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64).reshape(3, 3)
    if variable_cell and not pbc.all():
        raise ValueError("a variable cell (NPT) needs a cell periodic in all three directions")
    if skin < 0 or cutoff <= 0:
        raise ValueError(f"need cutoff > 0 and skin >= 0 Å, got cutoff={cutoff}, skin={skin}")
    if capacity_multiplier < 1.0:
        raise ValueError(f"capacity_multiplier must be >= 1, got {capacity_multiplier}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 K, got {temperature}")

    def allocate(positions, extra_capacity: int = 0, previous: VerletList | None = None, cell=None) -> VerletList:
        """Size the buffers for ``positions`` (N,3) Å (and, after an overflow, for the counts
        ``previous`` needed), then build on device; ``cell`` (3,3) Å: the current cell of a
        variable-cell run (default: the one given at creation)."""
        box = cell0 if cell is None else np.asarray(cell, np.float64).reshape(3, 3)
        positions_np = np.asarray(positions, np.float64)
        if positions_np.ndim != 2 or positions_np.shape[1] != 3 or len(positions_np) == 0:
            raise ValueError(f"positions must have shape (N, 3) with N > 0, got {positions_np.shape}")
        # The counts an overflowed list needed, grown by the head room once more: the system has
        # shown it drifts past its allocation, and each reallocation recompiles the MD loop.
        floors = (0, 0, 0) if previous is None else tuple(math.ceil(int(c) * capacity_multiplier) for c in (
            previous.max_pairs, previous.max_bin_count, previous.max_model_pairs))
        layout = _layout(positions_np, box, pbc, cutoff + skin, skin, capacity_multiplier,
                         capacity_floor=floors[0], bin_floor=floors[1], extra=extra_capacity,
                         model_cutoff=cutoff, model_floor=floors[2], temperature=temperature,
                         cell_slack=0.1 if variable_cell else 0.0, reverse=reverse)
        return _build(jnp.asarray(positions_np, dtype), layout)

    return NeighborFn(allocate=allocate, update=update_neighbor_list)
