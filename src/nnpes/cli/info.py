"""``nnpes info``: versions, devices, float precision and registered models (for bug reports)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ["nnpes", "jax", "jaxlib", "flax", "optax", "e3nn-jax", "jraph", "ase", "vesin", "orbax-checkpoint", "numpy"]


def collect() -> dict:
    """Everything ``nnpes info`` prints, as a dict."""
    import jax
    import jax.numpy as jnp

    from nnpes.models import MODELS, import_builtin_models

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
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


def run(args) -> int:
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
    p = subparsers.add_parser("info", help="show versions, devices, precision and registered models")
    p.set_defaults(func=run)
