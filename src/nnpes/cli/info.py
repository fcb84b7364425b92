"""``nnpes info``: versions, devices, float precision and registered models (for bug reports);
``nnpes info MODEL``: the model card of a saved model or run directory."""

from __future__ import annotations

import platform

PACKAGES = ["nnpes", "jax", "jaxlib", "flax", "optax", "e3nn-jax", "jraph", "ase", "vesin", "orbax-checkpoint", "numpy"]


def collect() -> dict:
    """Everything ``nnpes info`` prints, as a dict."""
    import jax
    import jax.numpy as jnp

    from nnpes.models import MODELS, import_builtin_models

    from nnpes.potential.card import package_versions

    versions = {"python": platform.python_version(), **package_versions(PACKAGES)}
    import_builtin_models()
    x64 = bool(jax.config.jax_enable_x64)
    return {
        "versions": versions,
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()],
        "x64_enabled": x64,
        "default_float": str(jnp.zeros(()).dtype),
        "models": sorted(name for name in MODELS if not name.startswith("_")),
    }


def describe_model(path) -> str:
    """``nnpes info MODEL``: the model card of a saved model (or a run directory's ``model/``) as
    text; for a model saved before cards existed, what its config and parameters say."""
    from nnpes.cli.evaluate import model_dir
    from nnpes.potential import CONFIG_FILE, PARAMS_FILE, ModelCard

    directory = model_dir(path)
    for name in (CONFIG_FILE, PARAMS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{str(path)!r} is neither a saved model nor a run directory with model/ "
                                    f"({name} is missing)")
    card = ModelCard.load(directory)
    m, saved_by = (card.model, None) if card is not None else _summary_without_card(directory)
    lines = [f"model     {directory}",
             f"          {m.name}, elements {' '.join(m.elements)}, cutoff {m.cutoff} Å, {m.dtype}, "
             f"{m.n_parameters:,} parameters"]
    if card is None:
        lines.append(f"          no model card: saved by nnpes {saved_by}, before cards existed")
        return "\n".join(lines)
    lines += [f"created   {card.created}",
              "versions  " + ", ".join(f"{k} {v}" for k, v in card.versions.items()),
              "units     " + ", ".join(f"{k} {v}" for k, v in card.units.items())]
    if card.data is not None:
        frames = ", ".join(f"{k} {v}" for k, v in card.data.frames.items())
        lines.append(f"data      frames: {frames} (energies in the files: {card.data.energy_unit})")
        width = max((len(f.role) for f in card.data.files), default=0)
        lines += [f"          {f.role:<{width}}  {f.path}  sha256 {f.sha256[:12]}" for f in card.data.files]
    lines += _lineage_lines(card)
    shortest = card.shortest_distances()
    if shortest:  # predict warns below these
        lines.append("shortest  distances in the training data (Å; predict warns below): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in shortest.items()))
    if card.test_metrics:
        from nnpes.training.evaluate import format_metrics

        lines.append(f"errors    on the {card.test_split} set")
        lines += ["          " + line for line in format_metrics(card.test_metrics).splitlines()]
    return "\n".join(lines)


def _lineage_lines(card) -> list[str]:
    """One line per model ``card`` was fine-tuned from, nearest first: path, date, training files."""
    lines = []
    for parent in (c.parent for c in card.lineage() if c.parent is not None):
        if parent.card is None:  # lineage() ends with this one
            lines.append(f"parent    {parent.path} (saved without a model card)")
            continue
        data = parent.card.data
        train = ", ".join(f.path for f in data.files if f.role == "train") if data else "data not recorded"
        lines.append(f"parent    {parent.path}: {parent.card.model.name}, created {parent.card.created}, trained on {train}")
    return lines


def _summary_without_card(directory):
    """(``ModelSummary``, nnpes version) of a model saved before cards, from its config and
    parameters, without building the model."""
    import flax.serialization
    import yaml

    from nnpes.potential import CONFIG_FILE, PARAMS_FILE
    from nnpes.potential.card import ModelSummary, count_parameters

    config = yaml.safe_load((directory / CONFIG_FILE).read_text())
    model = config["model"]
    n = count_parameters(flax.serialization.msgpack_restore((directory / PARAMS_FILE).read_bytes()))
    summary = ModelSummary(model["name"], list(model["elements"]), float(model["cutoff"]), model.get("dtype", "float32"), n)
    return summary, config.get("nnpes_version", "unknown")


def run(args) -> int:
    if getattr(args, "model", None):
        print(describe_model(args.model))
        return 0
    info = collect()
    width = max(len(k) for k in info["versions"])
    print("versions:")
    for name, ver in info["versions"].items():
        print(f"  {name:<{width}}  {ver}")
    print(f"backend: {info['backend']}")
    print("devices:")
    for d in info["devices"]:
        print(f"  {d}")
    print(f"default float: {info['default_float']} (jax_enable_x64: {str(info['x64_enabled']).lower()}; "
          "a model with dtype: float64 switches it on)")
    print(f"models: {', '.join(info['models'])}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="show versions, devices, precision and registered models; with MODEL, its model card",
        description="Without MODEL: versions, devices, float precision and registered models (for bug reports). "
        "With MODEL (a saved model or a run directory): its model card (model, versions, date, training data, test errors).")
    p.add_argument("model", nargs="?", default=None, help="a saved model directory or a run directory (uses RUN/model)")
    p.set_defaults(func=run)
