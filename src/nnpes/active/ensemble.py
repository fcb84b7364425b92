"""A committee of K potentials of one architecture with stacked parameters (leading axis K).

Evaluation is one jitted ``vmap`` of ``nnpes.potential.energy_forces_stress`` over the members,
followed by the disagreement measures of ``nnpes.active.uncertainty`` inside the same jit.
Training updates all K members in one jitted, vmapped optax step (one compile); members differ by
their initial seed and, optionally, by a bootstrap resampling of the training set expressed as
per-member structure weights (so every member sees the same padded batch).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
import yaml
from ase import Atoms

from nnpes.active.uncertainty import calibrate_scale, committee_measures
from nnpes.config.active import FitConfig
from nnpes.data.labels import reference_labels
from nnpes.files import atomic_write, atomic_write_dir
from nnpes.graph import atoms_to_graph, batch, node_graph_index, pad_graph, to_device
from nnpes.graph.distances import merge_shortest, shortest_distances, warn_close_contacts
from nnpes.potential import Potential, build_potential, energy_forces_stress
from nnpes.potential.compiled import cached, model_key
from nnpes.potential.predict import OUTPUT_LAYOUT, predict_structures
from nnpes.training.loss import reweight
from nnpes.training.step import TrainState, make_train_step

ENSEMBLE_FILE = "ensemble.msgpack"
META_FILE = "ensemble.json"
CONFIG_FILE = "config.yaml"
STD_KEYS = ("force_std", "rel_force_std", "max_force_std", "max_rel_force_std", "energy_std_per_atom")


def stack_variables(variables: Sequence) -> dict:
    """K variable dicts of identical structure → one dict whose leaves have a leading K axis."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *variables)


def unstack_variables(stacked, k: int) -> dict:
    return jax.tree_util.tree_map(lambda x: x[k], stacked)


@dataclass
class Ensemble:
    """K members: ``template`` gives config/module/table, ``variables`` are stacked (leading K).

    ``nu`` (eV/Å) regularises the relative force disagreement; ``std_scale`` (1) multiplies every
    standard deviation reported (1 until ``calibrate`` fits it against validation errors).
    ``shortest_distances`` (Å per element pair) of the members' training data, as a model card's:
    ``predict`` warns below them (None: not recorded, nothing checked)."""

    template: Potential
    variables: dict
    nu: float = 1.0
    std_scale: float = 1.0
    shortest_distances: dict[str, float] | None = None

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def build(cls, config, size: int, *, seed: int = 0, dataset: Sequence[Atoms] | None = None,
              nu: float = 1.0) -> "Ensemble":
        """K = ``size`` members from ``build_potential(config, seed + k, dataset)``."""
        if size < 2:
            raise ValueError(f"a committee needs at least 2 members, got size={size}")
        first = build_potential(config, seed=seed, dataset=dataset)
        members = [first]
        for k in range(1, size):
            # The data statistics (E0, scale, ⟨neighbours⟩) and the data-derived "constants" of a
            # calibrate hook are the same for every member: take them from the first, vary the seed.
            other = build_potential(first.config, seed=seed + k)
            members.append(first.replace({**first.params, "params": other.params["params"]}))
        return cls.from_potentials(members, nu=nu)

    @classmethod
    def from_potentials(cls, potentials: Sequence[Potential], nu: float = 1.0) -> "Ensemble":
        first = potentials[0]
        for k, p in enumerate(potentials[1:], 1):
            if p.config.to_dict() != first.config.to_dict():
                raise ValueError(f"committee member {k} has a different model config from member 0")
        # Bootstrap members saw different subsets: a pair is extrapolation only below all of them.
        shortest = merge_shortest([p.shortest_distances for p in potentials])
        return cls(first, stack_variables([p.params for p in potentials]), nu=nu, shortest_distances=shortest)

    @property
    def size(self) -> int:
        return int(jax.tree_util.tree_leaves(self.variables)[0].shape[0])

    @property
    def config(self):
        return self.template.config

    @property
    def cutoff(self) -> float:
        return self.template.cutoff

    @property
    def dtype(self):
        return self.template.dtype

    def member(self, k: int) -> Potential:
        return self.template.replace(unstack_variables(self.variables, k))

    def replace(self, variables) -> "Ensemble":
        """A copy with new stacked variables sharing the compiled functions."""
        return dataclasses.replace(self, variables=variables)

    def cache_key(self, *extra) -> tuple:
        """Key of this committee's compiled functions in ``nnpes.potential.compiled``."""
        return model_key(self.template.module, self.config.elements) + ("committee", self.nu) + extra

    # ---- evaluation --------------------------------------------------------------------------

    def committee_fn(self, compute_stress: bool = False):
        """Pure ``(stacked_variables, padded_graph, std_scale) -> dict``: member outputs
        ``member_energy`` (K, G), ``member_forces`` (K, N, 3) and the measures of
        ``committee_measures`` (std ones multiplied by ``std_scale``)."""
        module, table, nu = self.template.module, self.template.table, self.nu

        def fn(variables, graph, std_scale):
            out = jax.vmap(lambda v: energy_forces_stress(module, table, v, graph, compute_stress))(variables)
            res = committee_measures(
                out["energy"], out["forces"], jraph.get_node_padding_mask(graph),
                node_graph_index(graph), graph.n_node, nu,
            )
            res = {k: (v * std_scale if k in STD_KEYS else v) for k, v in res.items()}
            res["member_energy"] = out["energy"]
            res["member_forces"] = out["forces"]
            res["energies"] = jnp.mean(out["energies"], axis=0)
            if compute_stress:
                res["stress"] = jnp.mean(out["stress"], axis=0)
            return res

        return fn

    def _compiled(self, compute_stress: bool):
        return cached(self.cache_key("eval", compute_stress), lambda: jax.jit(self.committee_fn(compute_stress)))

    def calculator(self, **kwargs):
        """An ase Calculator on the committee mean (energy, forces, stress, per-atom energies)."""
        from nnpes.potential.calculator import NNPESCalculator

        return NNPESCalculator(self, **kwargs)

    def predict(self, atoms: Atoms | Sequence[Atoms], compute_stress: bool | None = None):
        """Committee mean ``energy`` (eV), ``forces`` (N,3) eV/Å, ``energies`` (N,), ``stress``
        (3,3) eV/Å³ (periodic only); members' ``member_energy`` (K,), ``member_forces`` (K,N,3);
        per-atom ``force_std``, ``rel_force_std`` (N,) and per-structure ``max_force_std`` (eV/Å),
        ``max_rel_force_std`` (1), ``energy_std_per_atom`` (eV/atom). dict, or list for a list."""
        single = isinstance(atoms, Atoms)
        atoms_list = [atoms] if single else list(atoms)
        for k, a in enumerate(atoms_list):
            self.template.check_elements(a, None if single else k)
        stress = any(bool(np.all(a.pbc)) for a in atoms_list) if compute_stress is None else bool(compute_stress)
        fn = self._compiled(stress)
        results = predict_structures(lambda g: fn(self.variables, g, self.std_scale), atoms_list, self.cutoff,
                                     self.dtype, layout=COMMITTEE_LAYOUT, max_edges=MAX_EDGES_PER_CALL,
                                     check_graphs=lambda graphs: self.warn_close_contacts(graphs, stacklevel=5))
        return results[0] if single else results

    def warn_close_contacts(self, graphs, stacklevel: int = 2) -> list:
        """As ``Potential.warn_close_contacts``, against the committee's ``shortest_distances``."""
        return warn_close_contacts(graphs, self.shortest_distances, self.config.elements, self.cutoff,
                                   stacklevel + 1)

    def errors(self, atoms_list: Sequence[Atoms]) -> dict:
        """Committee-mean errors against the labels, the metrics ``nnpes evaluate`` reports (meV:
        ``energy_per_atom_meV``, ``forces_meV_per_A``, … each with mae/rmse/n), plus the mean
        ``max_force_std`` (meV/Å) for comparison."""
        from nnpes.training.evaluate import error_metrics, predict_and_compare

        atoms_list = list(atoms_list)
        if not atoms_list:
            return {}
        preds = self.predict(atoms_list)
        out = error_metrics(predict_and_compare(self, atoms_list, preds))
        out["mean_max_force_std_meV_per_A"] = 1e3 * float(np.mean([p["max_force_std"] for p in preds]))
        return out

    def calibrate(self, atoms_list: Sequence[Atoms]) -> float:
        """Fit ``std_scale`` so the per-atom force standard deviation matches the per-atom force
        error |F̄ − F_ref| on labelled (validation) structures; returns the scale."""
        saved, self.std_scale = self.std_scale, 1.0
        try:
            preds = self.predict(list(atoms_list))
        finally:
            self.std_scale = saved
        std, err = [], []
        for a, p in zip(atoms_list, preds):
            _, forces, _ = reference_labels(a)
            if forces is None:
                continue
            std.append(p["force_std"])
            err.append(np.linalg.norm(p["forces"] - forces, axis=-1))
        if not std:
            raise ValueError("Ensemble.calibrate: no structure carries force labels")
        self.std_scale = calibrate_scale(np.concatenate(std), np.concatenate(err))
        return self.std_scale

    # ---- training ----------------------------------------------------------------------------

    def fit(self, train: Sequence[Atoms], fit: FitConfig | None = None, *, log=None) -> "Ensemble":
        """Train all members together from their current parameters (a warm start when this
        ensemble comes from a previous iteration). Returns a new Ensemble; only ``params`` train.

        The step is ``nnpes.training.make_train_step``'s, vmapped over the members (one compile
        for all K); bootstrap resampling enters as per-member structure weights, so every member
        sees the same padded batch. ``log(epoch, losses)`` gets the K mean losses of each epoch."""
        fit = fit or FitConfig()
        train = list(train)
        if not train:
            raise ValueError("Ensemble.fit: the training set is empty")
        graphs = [atoms_to_graph(a, self.cutoff) for a in train]
        n, bs = len(graphs), max(1, min(fit.batch_size, len(graphs)))
        shape = fixed_batch_shape(graphs, bs)  # one padded shape: one compile
        boot = bootstrap_weights(self.size, n, fit.seed) if fit.bootstrap else np.ones((self.size, n))
        steps_per_epoch = -(-n // bs)
        # The rate enters as the step's lr_scale (a traced scalar) on a unit-rate Adam, so fits of
        # any length or rate share one compile.
        schedule = optax.cosine_decay_schedule(fit.lr, fit.max_epochs * steps_per_epoch, fit.min_lr_ratio)
        step = cached(self.cache_key("fit"), lambda: committee_step(self.template))
        state = jax.vmap(lambda v: TrainState.create(v, UNIT_ADAM, ema=False))(self.variables)
        dtype = self.dtype
        weights = {k: jnp.asarray(v, dtype) for k, v in
                   (("energy", fit.energy_weight), ("forces", fit.forces_weight), ("stress", 0.0))}
        n_step = 0
        for epoch in range(fit.max_epochs):
            order = np.random.default_rng([fit.seed, epoch]).permutation(n)
            losses = []
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                graph = to_device(pad_graph(batch([graphs[i] for i in idx]), *shape), dtype)
                w = np.zeros((self.size, shape[2]))
                w[:, : len(idx)] = boot[:, idx]
                lr = jnp.asarray(schedule(n_step), dtype)
                state, metrics = step(state, graph, weights, lr, jnp.asarray(w, dtype))
                n_step += 1
                losses.append(np.asarray(metrics.loss))
            if log is not None:
                log(epoch, np.mean(losses, axis=0))
        # The committee now knows what ``train`` holds, and nothing else (a warm start's earlier
        # data is part of ``train`` in the active-learning loop).
        return dataclasses.replace(self, variables=state.variables,
                                   shortest_distances=shortest_distances(graphs, self.config.elements))

    # ---- persistence -------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Directory with ``config.yaml``, ``ensemble.msgpack`` (stacked variables) and
        ``ensemble.json`` (size, nu, std_scale), swapped in as a whole (``atomic_write_dir``)."""

        meta = {"size": self.size, "nu": self.nu, "std_scale": self.std_scale,
                "shortest_distances": self.shortest_distances}

        def fill(d: Path) -> None:
            atomic_write(d / ENSEMBLE_FILE, flax.serialization.to_bytes(self.variables))
            atomic_write(d / CONFIG_FILE, yaml.safe_dump(self.template.to_config(), sort_keys=False).encode())
            atomic_write(d / META_FILE, json.dumps(meta).encode())

        return atomic_write_dir(path, fill, (ENSEMBLE_FILE, CONFIG_FILE, META_FILE))


def load_ensemble(path) -> Ensemble:
    """Read a directory written by ``Ensemble.save``."""
    path = Path(path)
    for name in (CONFIG_FILE, ENSEMBLE_FILE, META_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a saved ensemble: {name} is missing")
    meta = json.loads((path / META_FILE).read_text())
    template = build_potential(str(path / CONFIG_FILE), seed=0)
    template_vars = stack_variables([template.params] * int(meta["size"]))
    raw = (path / ENSEMBLE_FILE).read_bytes()
    try:
        variables = flax.serialization.from_bytes(template_vars, raw)
    except Exception as e:  # noqa: BLE001 - any decoding/structure failure means a bad file
        raise ValueError(f"{str(path / ENSEMBLE_FILE)!r}: cannot restore committee parameters ({e})") from None
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    return Ensemble(template, variables, nu=float(meta["nu"]), std_scale=float(meta["std_scale"]),
                    shortest_distances=meta.get("shortest_distances"))  # absent: saved before it was recorded


# Per jitted committee call. The K members multiply every per-edge intermediate by K, and large
# per-edge arrays run at memory speed on CPU (see benchmarks/README.md), so the edge cap is smaller
# than a single potential's.
MAX_EDGES_PER_CALL = 1024

# Where each committee output lives, for splitting a batch per structure (see OUTPUT_LAYOUT).
COMMITTEE_LAYOUT = {
    **OUTPUT_LAYOUT, "member_energy": ("graph", 1), "member_forces": ("node", 1), "force_std": ("node", 0),
    "rel_force_std": ("node", 0), "max_force_std": ("graph", 0), "max_rel_force_std": ("graph", 0),
    "energy_std_per_atom": ("graph", 0),
}


# Adam at unit rate: the committee's learning rate (cosine schedule) is the step's lr_scale.
UNIT_ADAM = optax.chain(optax.scale_by_adam(), optax.scale(-1.0))


def committee_step(template: Potential):
    """``jit(vmap(train_step))`` over members: ``(states, graph, weights, lr, boot (K, G)) ->
    (states, StepMetrics)``; member k's structure weights are multiplied by ``boot[k]``."""
    train_step, _ = make_train_step(
        lambda v, g: energy_forces_stress(template.module, template.table, v, g, False), UNIT_ADAM, ema_decay=None)

    def member(state, graph, weights, lr, boot):
        return train_step(state, reweight(graph, boot), weights, lr)

    return jax.jit(jax.vmap(member, in_axes=(0, None, None, None, 0)))


def fixed_batch_shape(graphs, batch_size: int) -> tuple[int, int, int]:
    """(n_node, n_edge, n_graph) that holds any ``batch_size`` of ``graphs``."""
    nn = np.sort([int(g.n_node[0]) for g in graphs])[::-1]
    ne = np.sort([int(g.n_edge[0]) for g in graphs])[::-1]
    return int(nn[:batch_size].sum()) + 1, int(ne[:batch_size].sum()), batch_size + 1


def bootstrap_weights(k: int, n: int, seed: int) -> np.ndarray:
    """(k, n) counts: member k's bootstrap resample of n structures as per-structure weights."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(k)]).astype(float)
