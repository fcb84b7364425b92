"""The one cache of compiled functions, shared by every Potential and Ensemble of a model.

Copies of a potential (``replace``, a reloaded file, checkpoints of one run, committee members)
have the same module, so they share what was compiled for it. Keyed by the module's repr and the
model's elements: flax modules with list fields do not hash, and the repr names every field.
"""

from __future__ import annotations

from typing import Callable

_CACHE: dict[tuple, object] = {}
MAX_ENTRIES = 32


def model_key(module, elements) -> tuple:
    return (repr(module), tuple(elements))


def cached(key: tuple, make: Callable):
    """The value stored under ``key``, made by ``make()`` the first time (oldest entry evicted)."""
    if key not in _CACHE:
        if len(_CACHE) >= MAX_ENTRIES:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    return _CACHE[key]


class TraceCounted:
    """``jax.jit(fn, static_argnums)`` with a count of traces (one per compiled shape), so tests
    and logs can see recompilation."""

    def __init__(self, fn: Callable, static_argnums=()):
        import jax

        self.n_traces = 0
        self.seen: dict = {}  # static arguments → padded shapes called with (predict announces new ones)

        def counted(*args):
            self.n_traces += 1  # runs at trace time only
            return fn(*args)

        self.fn = jax.jit(counted, static_argnums=static_argnums)

    def __call__(self, *args):
        return self.fn(*args)

    def shapes_seen(self, *static) -> set:
        """The set of padded shapes called with for these static arguments (callers add to it)."""
        return self.seen.setdefault(static, set())
