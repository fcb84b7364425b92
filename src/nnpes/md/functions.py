"""A Potential as jax-md style functions of positions: ``neighbor_fn, energy_fn = md_functions(pot, atoms)``.

    nbrs = neighbor_fn.allocate(R)          # R (N,3) Å
    nbrs = neighbor_fn.update(R, nbrs)      # jittable, rebuilds on device when needed
    E = energy_fn(R, neighbor=nbrs)         # () eV, jittable and differentiable in R
    F = energy_fn.force_fn(R, neighbor=nbrs)            # (N,3) eV/Å  (= nnpes.md.force_fn(energy_fn))
    E, F = energy_fn.energy_and_forces(R, neighbor=nbrs)   # one forward + backward pass

The neighbour list holds pairs out to cutoff + skin; the pairs within the model's cutoff are
compacted into ``layout.model_capacity`` slots before the model runs (the model sees exactly the
pairs a host list at the cutoff would give, and does no work on the skin shell). If more pairs are
inside than slots, the energy is NaN (never silently wrong) and ``update`` flags the overflow.
The cell is the structure's unless ``cell=`` is passed (NPT: ``energy_fn(R, neighbor=nbrs, cell=h)``
with ``nbrs = neighbor_fn.update(R, nbrs, box=h)`` from ``md_functions(..., variable_cell=True)``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from nnpes.graph.verlet import NeighborFn, VerletList, model_pair_mask, neighbor_list_fn
from nnpes.models.energy import takes_pairs
from nnpes.models.inputs import ModelInputs
from nnpes.models.nequip_ops import EdgePairs
from nnpes.potential.predict import check_structure

# Keyword arguments that jax-md's integrators pass to energy functions; they do not change the energy.
_JAX_MD_KWARGS = {"kT", "mass", "t", "dt"}


def check_elements(potential, atoms: Atoms, source: str = "structure") -> None:
    """ValueError naming the elements of ``atoms`` that ``potential`` does not know (or an empty
    or non-finite structure)."""
    try:
        check_structure(atoms, potential.config.elements)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def compiled(method):
    """``method`` run as one compiled program per instance. Called eagerly (an integrator's
    ``init_fn``, a test, a user's loop), the energy would otherwise dispatch and compile each of its
    hundreds of small ops on its own: 8 s for the first eager call of the test suite's tiny model
    against 1.5 s jitted. Inside a caller's ``jit`` it is inlined as before."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        cache = self.__dict__.setdefault("_compiled", {})
        if method not in cache:
            cache[method] = jax.jit(functools.partial(method, self))
        return cache[method](*args, **kwargs)

    return run


def slot_pairs(inside, idx, real, neighbor: VerletList) -> EdgePairs:
    """The model slots' edge pairs from the list's reverse index (``VerletList.reverse``, made at
    each build), so the model needs no per-step sort for its per-pair radial MLP. ``inside``
    (capacity,) bool list entries within the cutoff; slot k holds entry ``idx[k]`` (``real[k]``).
    Each pair is led by its lower slot; padding pairs point at the last slot. ``valid`` is False
    (the model then goes per edge) if the list was unpaired or a partner fell outside the cutoff."""
    cap = idx.shape[0]
    slot_of = jnp.cumsum(inside, dtype=jnp.int32) - 1  # slot of each entry within the cutoff
    rev = neighbor.reverse[idx]
    partner = slot_of[rev]
    valid = neighbor.paired & jnp.all(jnp.where(real, inside[rev], True))
    lead = real & (jnp.arange(cap, dtype=jnp.int32) < partner)
    (first,) = jnp.nonzero(lead, size=(cap + 1) // 2, fill_value=cap - 1)
    second = jnp.where(lead[first], partner[first], first)
    return EdgePairs(first.astype(jnp.int32), second.astype(jnp.int32), valid)


class EnergyFn:
    """Potential energy (eV) of one structure as a function of its positions (N,3) Å."""

    def __init__(self, potential, atoms: Atoms, params=None):
        check_elements(potential, atoms)
        self.potential = potential
        self.dtype = jnp.float64 if potential.config.dtype == "float64" else jnp.float32
        self.params = potential.params if params is None else params
        self.cutoff = float(potential.config.cutoff)
        n = len(atoms)
        self.n_atoms = n
        species = np.asarray(potential.table)[atoms.numbers]
        # One trailing padding atom (species 0, masked) that padding edges point to.
        self.species = jnp.asarray(np.append(species, 0), jnp.int32)
        self.node_mask = jnp.arange(n + 1) < n
        self.node_graph = jnp.asarray(np.append(np.zeros(n, np.int32), 1))
        self.n_node = jnp.asarray([n, 1], jnp.int32)
        self.cell = jnp.asarray(np.asarray(atoms.cell.array, np.float64), self.dtype)
        self.pairs_used = takes_pairs(potential.module.inner)

    def model_inputs(self, positions, neighbor: VerletList, cell=None):
        """(ModelInputs, overflow () bool) at ``positions`` (N,3) Å in ``cell`` (3,3) Å (default:
        the structure's): the list's pairs within the cutoff compacted into
        ``layout.model_capacity`` slots (order kept: sorted by receiver, padding last), so the
        model does no work on the skin shell."""
        cell = self.cell if cell is None else cell
        if neighbor is None:
            raise TypeError("energy_fn needs neighbor=nbrs (from neighbor_fn.allocate / update)")
        positions = jnp.asarray(positions).astype(self.dtype)
        pos = jnp.concatenate([positions, jnp.zeros((1, 3), self.dtype)])
        if neighbor.layout.n_atoms != self.n_atoms:
            raise ValueError(f"neighbour list is for {neighbor.layout.n_atoms} atoms, positions have {self.n_atoms}")
        n = self.n_atoms
        inside = model_pair_mask(positions, cell, neighbor)
        capacity = neighbor.layout.model_capacity
        (idx,) = jnp.nonzero(inside, size=capacity, fill_value=inside.shape[0])
        real = idx < inside.shape[0]
        idx = jnp.minimum(idx, inside.shape[0] - 1)
        senders = jnp.where(real, neighbor.senders[idx], n)
        receivers = jnp.where(real, neighbor.receivers[idx], n)
        shifts = jnp.where(real[:, None], neighbor.shifts[idx], 0).astype(self.dtype)
        vectors = jnp.where(real[:, None], pos[senders] - pos[receivers] + shifts @ cell, 0.0)
        # A list built without reverse entries (``neighbor_list_fn(reverse=False)``): the model sorts.
        pairs = slot_pairs(inside, idx, real, neighbor) if self.pairs_used and neighbor.layout.reverse else None
        inputs = ModelInputs(vectors, self.species, senders, receivers, real, self.node_mask,
                             self.node_graph, self.n_node, pairs)
        return inputs, jnp.sum(inside) > capacity

    def per_atom_energies(self, positions, neighbor: VerletList, params=None, cell=None):
        """(N,) eV."""
        params = self.params if params is None else params
        inputs, overflow = self.model_inputs(positions, neighbor, cell)
        e = self.potential.module.apply(params, inputs)
        # More pairs inside the cutoff than slots: some were dropped, so the energy is wrong. Make
        # that loud (NaN) rather than silent; ``update`` at these positions also flags the overflow.
        return jnp.where(overflow, jnp.nan, e[: self.n_atoms])

    @compiled
    def __call__(self, positions, neighbor: VerletList = None, params=None, cell=None, **kwargs):
        unknown = set(kwargs) - _JAX_MD_KWARGS
        if unknown:
            raise TypeError(f"energy_fn got unexpected keyword arguments {sorted(unknown)}")
        return jnp.sum(self.per_atom_energies(positions, neighbor, params, cell))

    @compiled
    def energy_forces_stress(self, positions, neighbor: VerletList = None, params=None, cell=None, **kwargs):
        """(() eV, (N,3) eV/Å, (3,3) eV/Å³) from one pass: the stress is (1/V) ∂E/∂ε for a
        homogeneous strain ε of positions and ``cell`` (3,3) Å (default the structure's; NPT
        passes the current one) (ase's sign: positive is tensile, pressure −trace/3; no kinetic
        term). Fully periodic cells only (V is the cell's volume)."""
        dtype = self.cell.dtype
        cell = self.cell if cell is None else jnp.asarray(cell).astype(dtype)

        def strained(r, eps):
            deform = jnp.eye(3, dtype=dtype) + 0.5 * (eps + eps.T)
            return self.__call__(r @ deform, neighbor, params, cell=cell @ deform, **kwargs)

        e, (g_r, g_eps) = jax.value_and_grad(strained, argnums=(0, 1))(
            jnp.asarray(positions).astype(dtype), jnp.zeros((3, 3), dtype))
        return e, -g_r, g_eps / jnp.abs(jnp.linalg.det(cell))

    @compiled
    def energy_and_forces(self, positions, neighbor: VerletList = None, params=None, **kwargs):
        """(() eV, (N,3) eV/Å) from one pass."""
        e, g = jax.value_and_grad(self.__call__)(positions, neighbor, params, **kwargs)
        return e, -g

    def force_fn(self, positions, neighbor: VerletList = None, params=None, **kwargs):
        """(N,3) eV/Å, −∂E/∂R."""
        return self.energy_and_forces(positions, neighbor, params, **kwargs)[1]


class CommitteeOutput(NamedTuple):
    """energy () eV and forces (N,3) eV/Å: the committee mean; member_energy (K,) eV and
    member_forces (K,N,3) eV/Å: each member's, for the disagreement."""

    energy: jnp.ndarray
    forces: jnp.ndarray
    member_energy: jnp.ndarray
    member_forces: jnp.ndarray


class CommitteeEnergyFn(EnergyFn):
    """The committee-mean energy (eV) of K potentials of one architecture as a function of the
    positions (N,3) Å: ``EnergyFn``'s model inputs, the model vmapped over the stacked variables
    (leading axis K; ``CommitteeEnergyFn(ensemble.template, atoms, ensemble.variables)``). ``energy_and_forces`` gives the mean; ``members`` every member's too."""

    def member_energies_and_forces(self, positions, neighbor: VerletList = None, params=None, **kwargs):
        """(E_k (K,) eV, F_k (K,N,3) eV/Å) from one vmapped forward + backward pass."""
        params = self.params if params is None else params
        single = lambda v, r: EnergyFn.__call__(self, r, neighbor, v, **kwargs)
        e, g = jax.vmap(jax.value_and_grad(single, argnums=1), in_axes=(0, None))(params, positions)
        return e, -g

    @compiled
    def members(self, positions, neighbor: VerletList = None, params=None, **kwargs) -> CommitteeOutput:
        e_k, f_k = self.member_energies_and_forces(positions, neighbor, params, **kwargs)
        return CommitteeOutput(jnp.mean(e_k), jnp.mean(f_k, axis=0), e_k, f_k)

    @compiled
    def __call__(self, positions, neighbor: VerletList = None, params=None, **kwargs):
        """() eV, the committee mean."""
        params = self.params if params is None else params
        single = lambda v: EnergyFn.__call__(self, positions, neighbor, v, **kwargs)
        return jnp.mean(jax.vmap(single)(params))

    @compiled
    def energy_and_forces(self, positions, neighbor: VerletList = None, params=None, **kwargs):
        """(() eV, (N,3) eV/Å): the committee mean."""
        out = self.members(positions, neighbor, params, **kwargs)
        return out.energy, out.forces


def force_fn(energy_fn: EnergyFn):
    """The force function (R, neighbor=nbrs) -> (N,3) eV/Å of an ``energy_fn`` from md_functions."""
    return energy_fn.force_fn


class MDFunctions(NamedTuple):
    neighbor_fn: NeighborFn
    energy_fn: EnergyFn


def md_functions(potential, atoms: Atoms, skin: float = 0.5, capacity_multiplier: float = 1.25,
                 params=None, temperature: float = 300.0, variable_cell: bool = False) -> MDFunctions:
    """``neighbor_fn, energy_fn`` for ``atoms``' species, cell and pbc (positions are arguments).
    ``potential`` may be a committee (``nnpes.active.Ensemble``: ``template`` and stacked
    ``variables``); then ``energy_fn`` is a ``CommitteeEnergyFn`` on the committee mean.

    skin: Å added to the cutoff; the list is rebuilt when an atom moved more than skin/2.
    capacity_multiplier: head room of the padded buffers over the counts at allocation.
    params: flax variables to use instead of ``potential.params``.
    temperature: K, the buffers are sized for thermal motion at this temperature.
    variable_cell: the cell changes during the run (NPT): the list follows it (``neighbor_list_fn``)."""
    if hasattr(potential, "template"):  # a committee; md does not import active (data flows one way)
        energy_fn = CommitteeEnergyFn(potential.template, atoms, potential.variables if params is None else params)
    else:
        energy_fn = EnergyFn(potential, atoms, params)
    neighbor_fn = neighbor_list_fn(
        atoms.cell.array, atoms.pbc, energy_fn.cutoff, skin=skin,
        capacity_multiplier=capacity_multiplier, dtype=energy_fn.dtype, temperature=temperature,
        variable_cell=variable_cell, reverse=energy_fn.pairs_used,
    )
    return MDFunctions(neighbor_fn, energy_fn)
