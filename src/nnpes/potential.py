"""The Potential: the one object users hold (config + flax module + parameters).

Forces are −∂E/∂R by ``jax.grad``; stress is (1/V) ∂E/∂ε for a symmetric strain ε applied to the
cell and the positions (ase sign convention, eV/Å³).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import yaml
from ase import Atoms

from nnpes import keys
from nnpes.batching import batch, pad_to_bucket, to_device
from nnpes.graph import atoms_to_graph, edge_vectors, node_graph_index
from nnpes.models import get_model
from nnpes.models.config import ModelConfig, parse_model_config
from nnpes.models.energy import EnergyModel
from nnpes.files import atomic_write, yaml_safe
from nnpes.schema import ConfigError


def species_table(config: ModelConfig) -> np.ndarray:
    """(119,) int32: atomic number → index in config.elements, −1 if unknown (0 → 0 for padding)."""
    table = np.full(119, -1, np.int32)
    for k, z in enumerate(config.numbers):
        table[z] = k
    table[0] = 0
    return table


def make_module(config: ModelConfig) -> EnergyModel:
    spec = get_model(config.name)
    inner = spec.build(config.hparams, config)
    e0 = [float((config.e0 or {}).get(s, 0.0)) for s in config.elements]
    return EnergyModel(inner=inner, e0_init=tuple(e0), scale_init=float(config.scale or 1.0))


def per_atom_energies(module: EnergyModel, table, params, graph: jraph.GraphsTuple, positions, cell):
    """(N,) eV. ``positions`` (N,3) and ``cell`` (G,3,3) are explicit for differentiation."""
    species = jnp.asarray(table)[graph.nodes[keys.NUMBERS]]
    node_mask = jraph.get_node_padding_mask(graph)
    edge_mask = jraph.get_edge_padding_mask(graph)
    vectors = edge_vectors(positions, cell, graph)
    vectors = jnp.where(edge_mask[:, None], vectors, 0.0)
    return module.apply(
        params, vectors, jnp.maximum(species, 0), graph.senders, graph.receivers, edge_mask,
        node_mask, node_graph_index(graph), graph.n_node,
    )


def energy_forces_stress(module, table, params, graph: jraph.GraphsTuple, compute_stress: bool = True) -> dict:
    """Energies (G,) eV, forces (N,3) eV/Å, stress (G,3,3) eV/Å³ (zero where not periodic),
    per-atom energies (N,) eV. Padding graphs/nodes give zeros."""
    positions = graph.nodes[keys.POSITIONS]
    cell = graph.globals[keys.CELL]
    n_graph = graph.n_node.shape[0]
    node_graph = node_graph_index(graph)

    def total(positions, strain):
        sym = 0.5 * (strain + jnp.swapaxes(strain, 1, 2))
        pos = positions + jnp.einsum("ni,nij->nj", positions, sym[node_graph])
        c = cell + jnp.einsum("gij,gjk->gik", cell, sym)
        e_i = per_atom_energies(module, table, params, graph, pos, c)
        e_g = jax.ops.segment_sum(e_i, node_graph, n_graph)
        return jnp.sum(e_g), (e_g, e_i)

    strain = jnp.zeros((n_graph, 3, 3), positions.dtype)
    argnums = (0, 1) if compute_stress else 0
    grads, (e_g, e_i) = jax.grad(total, argnums=argnums, has_aux=True)(positions, strain)
    out = {"energy": e_g, "energies": e_i}
    if compute_stress:
        d_pos, d_strain = grads
        volume = jnp.abs(jnp.linalg.det(cell))
        periodic = jnp.all(graph.globals[keys.PBC], axis=-1) if keys.PBC in graph.globals else jnp.ones(n_graph, bool)
        stress = d_strain / jnp.where(periodic, volume, 1.0)[:, None, None]
        out["stress"] = jnp.where(periodic[:, None, None], stress, 0.0)
    else:
        d_pos = grads
    out["forces"] = -d_pos
    return out


class _Compiled:
    """The jitted energy/forces/stress of one module, shared by every copy of a Potential
    (``replace`` keeps it), with a trace counter so tests can see recompilation."""

    def __init__(self, module, table):
        self.n_traces = 0

        def efs(variables, graph, compute_stress):
            self.n_traces += 1  # runs at trace time only: counts compilations
            return energy_forces_stress(module, table, variables, graph, compute_stress)

        self.fn = jax.jit(efs, static_argnums=2)


# Potentials with the same module (a loaded copy, ensemble members, checkpoints of one run) share
# one compiled function. Keyed by the module's repr: flax modules with list fields do not hash.
_COMPILED: dict[tuple, _Compiled] = {}
_COMPILED_MAX = 16


def _compiled_for(module, config: ModelConfig) -> _Compiled:
    key = (repr(module), tuple(config.elements))
    if key not in _COMPILED:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = _Compiled(module, species_table(config))
    return _COMPILED[key]


@dataclass
class Potential:
    """Config + module + parameters. Build with ``nnpes.build_potential`` or ``nnpes.load_potential``.

    ``params`` is the full flax variables dict ({"params": ..., optionally "constants": ...}); only
    ``params["params"]`` is trained.
    """

    config: ModelConfig
    params: Any
    module: EnergyModel = None

    def __post_init__(self):
        if self.module is None:
            self.module = make_module(self.config)
        self.table = species_table(self.config)
        self._compiled = _compiled_for(self.module, self.config)

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    @property
    def elements(self) -> list[str]:
        return list(self.config.elements)

    @property
    def dtype(self):
        return jnp.float64 if self.config.dtype == "float64" else jnp.float32

    @property
    def n_compiles(self) -> int:
        """How many times ``predict``'s jitted function has been traced (one per padded shape)."""
        return self._compiled.n_traces

    def energy_forces_stress(self, params, graph, compute_stress: bool = True) -> dict:
        """Pure function of (variables, padded device graph); jit it yourself or use ``predict``."""
        return energy_forces_stress(self.module, self.table, params, graph, compute_stress)

    def replace(self, params) -> "Potential":
        """A copy with new variables; shares the module and the compiled functions."""
        new = copy.copy(self)
        new.params = params
        return new

    # ---- prediction --------------------------------------------------------------------------

    def check_elements(self, atoms: Atoms, index: int | None = None) -> None:
        """ValueError naming an element the model does not know."""
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(self.config.elements))
        if unknown:
            where = f"structure {index}: " if index is not None else ""
            raise ValueError(
                f"{where}element(s) {unknown} not in the model's elements {list(self.config.elements)}"
            )
        if len(atoms) == 0:
            raise ValueError(f"{'structure %d: ' % index if index is not None else ''}structure has no atoms")

    def check_geometry(self, atoms: Atoms, index: int | None = None) -> None:
        """ValueError for non-finite positions or cell (they would give NaN, not an error)."""
        where = f"structure {index}: " if index is not None else ""
        if not np.all(np.isfinite(atoms.positions)):
            bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1)).tolist()
            raise ValueError(f"{where}non-finite positions for atoms {bad[:10]}")
        if not np.all(np.isfinite(atoms.cell.array)):
            raise ValueError(f"{where}non-finite cell {atoms.cell.array.tolist()}")

    def predict(self, atoms: Atoms | Sequence[Atoms], compute_stress: bool | None = None):
        """Energy (eV), forces (N,3) eV/Å, per-atom ``energies`` (N,) eV and, for fully periodic
        structures, ``stress`` (3,3) eV/Å³ (ase sign). One Atoms → dict; a list → list of dicts.

        Structures are batched and padded to a few bucket shapes, so predicting many structures
        of similar size compiles once. ``compute_stress=None``: only if some structure is periodic.
        """
        single = isinstance(atoms, Atoms)
        atoms_list = [atoms] if single else list(atoms)
        for k, a in enumerate(atoms_list):
            self.check_elements(a, None if single else k)
            self.check_geometry(a, None if single else k)
        periodic = [bool(np.all(a.pbc)) for a in atoms_list]
        if compute_stress is None:
            compute_stress = any(periodic)
        graphs = [atoms_to_graph(a, self.cutoff) for a in atoms_list]
        results = []
        for chunk in _chunks(graphs):
            padded = _pad_for_predict(batch(chunk))
            out = self._compiled.fn(self.params, _to_device(padded, self.dtype), bool(compute_stress))
            out = jax.tree_util.tree_map(np.asarray, out)
            node0 = 0
            for g, graph in enumerate(chunk):
                n = int(graph.n_node[0])
                res = {
                    "energy": float(out["energy"][g]),
                    "forces": out["forces"][node0 : node0 + n].astype(np.float64),
                    "energies": out["energies"][node0 : node0 + n].astype(np.float64),
                }
                if compute_stress and periodic[len(results)]:
                    res["stress"] = out["stress"][g].astype(np.float64)
                results.append(res)
                node0 += n
        return results[0] if single else results

    def calculator(self, **kwargs):
        """An ase Calculator (energy, free_energy, forces, stress, energies)."""
        from nnpes.calculator import NNPESCalculator

        return NNPESCalculator(self, **kwargs)

    def md_functions(self, atoms: Atoms, skin: float = 0.5, capacity_multiplier: float = 1.25):
        """``neighbor_fn, energy_fn`` in jax-md's conventions for ``atoms``' species, cell and pbc
        (skin Å); forces: ``energy_fn.force_fn``. See ``nnpes.md.md_functions``."""
        from nnpes.md.functions import md_functions

        return md_functions(self, atoms, skin=skin, capacity_multiplier=capacity_multiplier)

    # ---- persistence -------------------------------------------------------------------------

    def to_config(self) -> dict:
        """Full config: ``{"nnpes_version": ..., "model": {...}}`` (a valid build_potential input)."""
        from nnpes import __version__

        return {"nnpes_version": __version__, "model": yaml_safe(self.config.to_dict())}

    def save(self, path) -> Path:
        """Write a directory with ``config.yaml`` and ``params.msgpack``; each file atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / PARAMS_FILE, flax.serialization.to_bytes(self.params))
        atomic_write(path / CONFIG_FILE, yaml.safe_dump(self.to_config(), sort_keys=False).encode())
        return path


PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "config.yaml"

# Predict-time batching: at most this many nodes / edges / graphs per jitted call (a larger
# structure goes alone). On the 2-core CPU, NequIP's time per aspirin frame rose once a call held
# more than ~2000 edges (per-edge intermediates leave the cache) while BP kept gaining up to ~20
# frames; see benchmarks/predict_overhead.py.
_MAX_NODES_PER_CALL = 4096
_MAX_EDGES_PER_CALL = 2048
_MAX_GRAPHS_PER_CALL = 64


def _chunks(graphs, max_nodes: int | None = None, max_edges: int | None = None, max_graphs: int | None = None):
    """Consecutive groups of single-structure graphs that fit one jitted call's budget."""
    max_nodes = _MAX_NODES_PER_CALL if max_nodes is None else max_nodes
    max_edges = _MAX_EDGES_PER_CALL if max_edges is None else max_edges
    max_graphs = _MAX_GRAPHS_PER_CALL if max_graphs is None else max_graphs
    chunk, nodes, edges = [], 0, 0
    for g in graphs:
        n, e = int(g.n_node[0]), int(g.n_edge[0])
        full = nodes + n > max_nodes or edges + e > max_edges
        if chunk and (full or len(chunk) >= max_graphs):
            yield chunk
            chunk, nodes, edges = [], 0, 0
        chunk.append(g)
        nodes += n
        edges += e
    if chunk:
        yield chunk


def _pad_for_predict(graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
    """Predict-time padding (``nnpes.batching.pad_to_bucket``); other modules import this name."""
    return pad_to_bucket(graph)


def _to_device(graph: jraph.GraphsTuple, dtype) -> jraph.GraphsTuple:
    """``nnpes.batching.to_device``; other modules import this name."""
    return to_device(graph, dtype)


def _model_section(config) -> ModelConfig:
    """dict / YAML path / ModelConfig, either a bare model section or a full config with ``model:``."""
    if isinstance(config, ModelConfig):
        return dataclasses.replace(config)
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} not found")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    elif isinstance(config, dict):
        data = config
    else:
        raise TypeError(f"config must be a dict, a YAML path or a ModelConfig, got {type(config).__name__}")
    if isinstance(data.get("model"), (dict, ModelConfig)):
        return _model_section(data["model"]) if isinstance(data["model"], ModelConfig) else parse_model_config(data["model"], "model")
    return parse_model_config(data, "model")


def _enable_x64_if_needed(cfg: ModelConfig) -> None:
    if cfg.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def build_potential(config, seed: int = 0, dataset: Sequence[Atoms] | None = None) -> Potential:
    """A Potential with fresh parameters.

    config: dict or YAML path: a bare ``model:`` section or a full config (other sections ignored).
    dataset: labelled ase.Atoms; where the config leaves them None it supplies E0 per element (eV,
    least squares), the scale σ (eV per unit model output, set to the force RMS as NequIP does) and
    the average number of neighbours, and the model's ``calibrate`` hook runs on its padded graphs.
    Defaults without data: E0 = 0, σ = 1, avg_num_neighbors = 1; they are written into the config.
    """
    cfg = _model_section(config)
    _enable_x64_if_needed(cfg)
    if dataset is not None:
        dataset = list(dataset)
        if not dataset:
            raise ValueError("build_potential: dataset is empty")
        from nnpes.stats import compute_stats

        stats = compute_stats(dataset, cfg.elements, cfg.cutoff)
        if cfg.e0 is None:
            cfg.e0 = dict(stats.e0)
        if cfg.scale is None:
            cfg.scale = float(stats.force_rms)
        if cfg.avg_num_neighbors is None:
            cfg.avg_num_neighbors = float(stats.avg_num_neighbors)
    # Record the defaults so a saved potential rebuilds exactly.
    if cfg.e0 is None:
        cfg.e0 = {s: 0.0 for s in cfg.elements}
    cfg.scale = 1.0 if cfg.scale is None else float(cfg.scale)
    cfg.avg_num_neighbors = 1.0 if cfg.avg_num_neighbors is None else float(cfg.avg_num_neighbors)
    module = make_module(cfg)
    variables = init_params(cfg, module, seed)
    spec = get_model(cfg.name)
    if dataset is not None and spec.calibrate is not None:
        pot = Potential(cfg, variables, module)
        for k, a in enumerate(dataset):
            pot.check_elements(a, k)
        graphs = [atoms_to_graph(a, cfg.cutoff) for a in dataset]
        padded = [_pad_for_predict(batch(c)) for c in _chunks(graphs)]  # host numpy, float64
        variables = spec.calibrate(module, variables, padded)
    return Potential(cfg, variables, module)


def load_potential(path) -> Potential:
    """Read a directory written by ``Potential.save``; predictions are bit-identical."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved potential at {str(path)!r}")
    for name in (CONFIG_FILE, PARAMS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a saved potential: {name} is missing")
    with open(path / CONFIG_FILE) as f:
        data = yaml.safe_load(f)
    cfg = _model_section(data)
    _enable_x64_if_needed(cfg)
    module = make_module(cfg)
    with open(path / PARAMS_FILE, "rb") as f:
        raw = f.read()
    try:
        state = flax.serialization.msgpack_restore(raw)
    except Exception as e:  # noqa: BLE001 - any decoding failure means a corrupt file
        raise ValueError(f"{str(path / PARAMS_FILE)!r}: cannot decode parameters ({e})") from None
    # The structure must match what this version of the model builds.
    template = jax.eval_shape(lambda: init_params(cfg, module, 0))
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(template)}
    have = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:5]
        raise ValueError(f"{str(path / PARAMS_FILE)!r}: parameters do not match model {cfg.name!r}: {diff}")
    variables = jax.tree_util.tree_map(jnp.asarray, state)
    return Potential(cfg, variables, module)


def init_params(config: ModelConfig, module: EnergyModel, seed: int = 0):
    """Fresh parameters from a tiny dummy graph (two atoms of the first element)."""
    from ase import Atoms

    from nnpes.batching import pad_graph
    from nnpes.graph import atoms_to_graph

    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    atoms = Atoms(config.elements[:1] * 2, positions=[[0, 0, 0], [0, 0, 0.5 * config.cutoff + 0.1]])
    g = pad_graph(atoms_to_graph(atoms, config.cutoff), 3, 4, 2)
    g = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating) else jnp.asarray(x), g)
    table = species_table(config)
    species = jnp.asarray(table)[g.nodes[keys.NUMBERS]]
    vectors = edge_vectors(g.nodes[keys.POSITIONS], g.globals[keys.CELL], g)
    # jit: un-jitted init dispatches every tiny op separately (~119 compiles, 5-9 s for BP).
    return jax.jit(module.init)(
        jax.random.PRNGKey(seed), vectors, jnp.maximum(species, 0), g.senders, g.receivers,
        jraph.get_edge_padding_mask(g), jraph.get_node_padding_mask(g), node_graph_index(g), g.n_node,
    )
