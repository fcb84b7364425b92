"""Typed, validated configuration: dataclasses filled from dicts with strict checking.

An unknown key is an error naming the key, its section and the closest valid key; a value of the
wrong type is an error naming the key, the expected type and what was given.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A configuration that cannot be used, with the offending key's dotted path."""


def doc(text: str, **kw):
    """A dataclass field with its comment (shown by ``nnpes config template``)."""
    return dataclasses.field(metadata={"doc": text}, **kw)


def closest(word, options, cutoff: float = 0.6) -> str | None:
    """The option most like ``word`` (for "did you mean ...?" hints), or None."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return close[0] if close else None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, path: str):
    """``value`` checked (and where unambiguous converted) against the type hint ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, tp, path)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            close = closest(value, allowed)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping (section), got {value!r}")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item_tp = (get_args(tp) or (Any,))[0]
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, path): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    return _coerce_scalar(value, tp, path)


def _coerce_union(value, tp, path: str):
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, path)
        except ConfigError:
            pass
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _coerce_scalar(value, tp, path: str):
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML reads "1e-3" as a string
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if math.isnan(value):  # never a setting: it would pass every range check and spread
            raise ConfigError(f"{path}: expected a number, got NaN")
        return float(value)
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def rename_deprecated(cls, data: dict, path: str = "", stacklevel: int = 5) -> dict:
    """``data`` with the old keys of ``cls.DEPRECATED_KEYS`` (``{"old": "new"}``) renamed, each
    with a DeprecationWarning; both spellings at once is an error."""
    renames = getattr(cls, "DEPRECATED_KEYS", {})
    if not any(k in data for k in renames):
        return data
    import warnings

    out = dict(data)
    where = f"{path}." if path else f"{cls.__name__}: "
    for old, new in renames.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{where}{old!r} is the deprecated name of {new!r}; give only {new!r}")
            warnings.warn(f"{where}{old!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=stacklevel)
            out[new] = out.pop(old)
    return out


def deprecated_keys(cls):
    """Class decorator for a dataclass with ``DEPRECATED_KEYS``: its constructor also takes the old
    keyword names and reading an old attribute name gives the new one (both warn)."""
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **rename_deprecated(cls, kwargs, stacklevel=3))

    def __getattr__(self, name):  # only called for names that are not attributes
        new = cls.DEPRECATED_KEYS.get(name)
        if new is None:
            raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")
        import warnings

        warnings.warn(f"{cls.__name__}.{name} is deprecated; use {new!r}", DeprecationWarning, stacklevel=2)
        return getattr(self, new)

    cls.__init__, cls.__getattr__ = __init__, __getattr__
    return cls


def from_dict(cls, data: dict | None, path: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types (old keys in
    ``cls.DEPRECATED_KEYS`` are renamed with a DeprecationWarning)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {data!r}")
    data = rename_deprecated(cls, data, path)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            close = closest(key, fields, cutoff=0.5)
            hint = f"; did you mean {close!r}?" if close else f"; valid keys: {sorted(fields)}"
            where = f"{path}." if path else ""
            raise ConfigError(f"unknown key {where}{key!r}{hint}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {sub!r}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
