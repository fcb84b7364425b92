"""Making a Potential: fresh parameters from a config (and the training set's statistics), or a
saved one read back."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Sequence

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import yaml
from ase import Atoms

from nnpes.config.model import ModelConfig, parse_model_config
from nnpes.config.schema import ConfigError
from nnpes.errors import reading
from nnpes.graph.build import atoms_to_graph
from nnpes.graph.distances import shortest_distances
from nnpes.graph.padding import pad_graph, to_device
from nnpes.models import get_model
from nnpes.models.energy import EnergyModel
from nnpes.models.inputs import model_inputs, species_table
from nnpes.models.repulsion import ZBLRepulsion, outer_radii_from_data
from nnpes.potential.card import ModelCard
from nnpes.potential.potential import CONFIG_FILE, PARAMS_FILE, Potential
from nnpes.graph.stats import check_known_elements, graph_stats
from nnpes.potential.predict import padded_batches


def make_module(config: ModelConfig) -> EnergyModel:
    spec = get_model(config.name)
    inner = spec.build(config.hparams, config)
    e0 = [float((config.e0 or {}).get(s, 0.0)) for s in config.elements]
    repulsion = None
    if config.pair_repulsion == "zbl":
        repulsion = ZBLRepulsion(tuple(config.numbers), tuple(sorted((config.pair_repulsion_outer or {}).items())))
    return EnergyModel(inner=inner, e0_init=tuple(e0), scale_init=float(config.scale or 1.0), repulsion=repulsion)


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
        _check_top_level(data)
        return _model_section(data["model"]) if isinstance(data["model"], ModelConfig) else parse_model_config(data["model"], "model")
    return parse_model_config(data, "model")


def _check_top_level(data: dict) -> None:
    """A full config's top-level keys must be sections of a training or active-learning config
    (or a saved model's ``nnpes_version``): a model key written there would be ignored."""
    from nnpes.config import SECTIONS
    from nnpes.config.active import ActiveConfig

    known = set(SECTIONS) | {f.name for f in dataclasses.fields(ActiveConfig)} | {"nnpes_version"}
    for key in data:
        if key not in known:
            in_model = key in {f.name for f in dataclasses.fields(ModelConfig)}
            hint = f"; it belongs in the model section (model.{key})" if in_model else f"; valid: {sorted(known)}"
            raise ConfigError(f"unknown top-level key {key!r}{hint}")


def check_saved_version(saved: str | None, where) -> None:
    """Refuse a model saved by a newer major version of nnpes (its format may differ); warn for a
    newer minor version. Unknown or local (0.0.0) versions are not compared."""
    from nnpes import __version__

    def parts(v):
        try:
            return tuple(int(x) for x in str(v).split("+")[0].split(".")[:2])
        except ValueError:
            return None

    have, mine = parts(saved), parts(__version__)
    if have is None or mine is None or len(have) < 2 or len(mine) < 2 or mine == (0, 0) or have <= mine:
        return
    if have[0] > mine[0]:
        raise ValueError(f"{where}: saved by nnpes {saved}, a newer major version than this nnpes {__version__}; "
                         "upgrade nnpes (pip install -U nnpes) to load it")
    warnings.warn(f"{where}: saved by nnpes {saved}, newer than this nnpes {__version__}; upgrade if loading fails",
                  stacklevel=3)


def check_finite_params(state, where) -> None:
    """ValueError naming a parameter array holding NaN or inf (a damaged file, or the parameters of
    a training that diverged): predictions would be NaN without an error."""
    for key, leaf in jax.tree_util.tree_leaves_with_path(state):
        x = np.asarray(leaf)
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            raise ValueError(f"{where}: parameter {jax.tree_util.keystr(key)} holds NaN or inf values; the model is "
                             "damaged (or its training diverged): load another one")


def _enable_x64_if_needed(cfg: ModelConfig) -> None:
    if cfg.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)


def build_potential(config, seed: int = 0, dataset: Sequence[Atoms] | None = None, *,
                    graphs: Sequence | None = None) -> Potential:
    """A Potential with fresh parameters.

    config: dict or YAML path: a bare ``model:`` section or a full config (other sections ignored).
    dataset: labelled ase.Atoms; where the config leaves them None it supplies E0 per element (eV,
    least squares), the scale σ (eV per unit model output, set to the force RMS as NequIP does) and
    the average number of neighbours, and the model's ``calibrate`` hook runs on its padded graphs;
    with ``pair_repulsion: zbl`` it sets each pair's r_out (``pair_repulsion_outer``) out to the
    data's shortest distance of the pair (× 0.9) where that is farther than the covalent one.
    graphs: the dataset's graphs at the model's cutoff, when the caller has built them already (the
    trainer does), so each structure's graph is built once.
    Defaults without data: E0 = 0, σ = 1, avg_num_neighbors = 1; they are written into the config.
    """
    cfg = _model_section(config)
    _enable_x64_if_needed(cfg)
    if dataset is not None:
        dataset = list(dataset)
        if not dataset:
            raise ValueError("build_potential: dataset is empty")
        check_known_elements(dataset, cfg.elements)
    if cfg.init_from is not None:
        return potential_from_saved(cfg, dataset, graphs)
    if dataset is not None:
        if graphs is None:
            graphs = [atoms_to_graph(a, cfg.cutoff) for a in dataset]
        stats = graph_stats(graphs, cfg.elements)
        if cfg.e0 is None:
            cfg.e0 = dict(stats.e0)
        _repulsion_radii_from_data(cfg, dataset, graphs)
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
        padded = [p for _, p in padded_batches(graphs)]  # host numpy, float64
        variables = spec.calibrate(module, variables, padded)
    return Potential(cfg, variables, module)


def _repulsion_radii_from_data(cfg: ModelConfig, dataset, graphs) -> None:
    """Fill ``pair_repulsion_outer`` (Å) from the data's shortest pair distances where zbl is on and
    the config leaves it None; ``graphs`` (None: built here, only then) are ``dataset``'s."""
    if cfg.pair_repulsion == "zbl" and cfg.pair_repulsion_outer is None and dataset is not None:
        if graphs is None:
            graphs = [atoms_to_graph(a, cfg.cutoff) for a in dataset]
        cfg.pair_repulsion_outer = outer_radii_from_data(shortest_distances(graphs, cfg.elements), cfg.numbers)


def _keep_saved_repulsion(cfg: ModelConfig, old: ModelConfig, where: str) -> None:
    """The saved model's short-range term carries over: dropping it, or falling back to other
    switching radii, would change energies at short range without a word."""
    if old.pair_repulsion != "none" and cfg.pair_repulsion != old.pair_repulsion:
        raise ConfigError(f"{where}: the saved model has pair_repulsion: {old.pair_repulsion}; set "
                          f"model.pair_repulsion: {old.pair_repulsion} (leave pair_repulsion_outer out to keep its radii)")
    if cfg.pair_repulsion == old.pair_repulsion and cfg.pair_repulsion_outer is None:
        cfg.pair_repulsion_outer = None if old.pair_repulsion_outer is None else dict(old.pair_repulsion_outer)


def same_architecture(new, old) -> bool:
    """Hyperparameters ``new`` and ``old`` equal but for those that change only how the model is
    computed (the class's ``EXECUTION`` fields, e.g. NequIP's edge blocking): defaults of those
    change between versions, and a model saved with the old ones must still be fine-tunable."""
    if type(new) is not type(old):
        return False
    execution = {name: getattr(new, name) for name in getattr(type(new), "EXECUTION", ())}
    return dataclasses.replace(old, **execution) == new


def saved_model_dir(path) -> Path:
    """A saved potential's directory: ``path`` itself, or ``path/model`` of a training run."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / CONFIG_FILE).is_file() and (candidate / PARAMS_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"model.init_from: {str(path)!r} is neither a saved potential nor a run directory with model/")


def potential_from_saved(cfg: ModelConfig, dataset: Sequence[Atoms] | None = None,
                         graphs: Sequence | None = None) -> Potential:
    """``cfg``'s model starting from the weights and normalisation of the saved potential
    ``cfg.init_from`` (fine-tuning). The architecture and elements must match; the dtype may differ
    (parameters are cast, e.g. float64 fine-tuning of a float32 run); the normalisation (e0, scale,
    avg_num_neighbors, and the trained parameters holding descriptor statistics) is the saved model's.
    A saved zbl term keeps its switching radii unless ``cfg`` sets them; zbl switched on for a model
    saved without it takes its radii from ``dataset`` (the fine-tuning data; ``graphs`` its graphs if
    built already), as a fresh build does."""
    saved = load_potential(saved_model_dir(cfg.init_from))
    old = saved.config
    where = f"model.init_from ({cfg.init_from})"
    if list(cfg.elements) != list(old.elements):
        new = sorted(set(cfg.elements) - set(old.elements))
        raise ConfigError(f"{where}: the saved model knows elements {list(old.elements)}; "
                          + (f"{new} are new to it" if new else f"model.elements is {list(cfg.elements)}"))
    if (cfg.name, cfg.cutoff) != (old.name, old.cutoff) or not same_architecture(cfg.hparams, old.hparams):
        execution = ", ".join(getattr(type(old.hparams), "EXECUTION", ()))
        raise ConfigError(f"{where}: the model section must describe the saved model ({old.name}, cutoff "
                          f"{old.cutoff} Å, {old.hparams}); only dtype, the normalisation"
                          + (f" and execution settings ({execution})" if execution else "") + " may differ")
    cfg = dataclasses.replace(cfg, init_from=None)
    for name in ("e0", "scale", "avg_num_neighbors"):
        # The weights were trained with the saved normalisation: another one would wreck them.
        if getattr(cfg, name) not in (None, getattr(old, name)):
            raise ConfigError(f"{where}: model.{name} = {getattr(cfg, name)} differs from the saved model's "
                              f"{getattr(old, name)}; leave it out to keep the saved normalisation")
        setattr(cfg, name, getattr(old, name))
    _keep_saved_repulsion(cfg, old, where)
    _repulsion_radii_from_data(cfg, dataset, graphs)
    dtype = jnp.float64 if cfg.dtype == "float64" else jnp.float32
    variables = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, saved.params)
    return Potential(cfg, variables, make_module(cfg))


def load_potential(path) -> Potential:
    """Read a directory written by ``Potential.save``; predictions are bit-identical. The model
    card, if the directory has one, becomes ``.card`` (None for models saved before cards)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no saved potential at {str(path)!r}")
    for name in (CONFIG_FILE, PARAMS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{str(path)!r} is not a saved potential: {name} is missing")
    with reading(f"model config {path / CONFIG_FILE}"), open(path / CONFIG_FILE) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{str(path / CONFIG_FILE)!r} is not a saved model's config (it is "
                         f"{'empty' if data is None else type(data).__name__}); save the model again")
    check_saved_version(data.get("nnpes_version"), path / CONFIG_FILE)
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
    check_finite_params(state, path / PARAMS_FILE)
    variables = jax.tree_util.tree_map(jnp.asarray, state)
    try:
        card = ModelCard.load(path)
    except ValueError as e:  # the card is a description: the model itself is fine
        warnings.warn(f"ignoring the model card: {e}", stacklevel=2)
        card = None
    return Potential(cfg, variables, module, card=card)


def init_params(config: ModelConfig, module: EnergyModel, seed: int = 0):
    """Fresh parameters from a tiny dummy graph (two atoms of the first element)."""
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    atoms = Atoms(config.elements[:1] * 2, positions=[[0, 0, 0], [0, 0, 0.5 * config.cutoff + 0.1]])
    graph = to_device(pad_graph(atoms_to_graph(atoms, config.cutoff), 3, 4, 2), dtype)
    # jit, model_inputs included: dispatched op by op they compile one by one (~119 compiles, 5-9 s
    # for BP; model_inputs alone ~40 in a fresh process).
    table = species_table(config.numbers)
    return jax.jit(lambda key, graph: module.init(key, model_inputs(graph, table)))(jax.random.PRNGKey(seed), graph)
