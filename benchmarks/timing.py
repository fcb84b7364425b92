"""Timing for the benchmarks: repeated calls after a warm-up, wall and CPU seconds, variants
alternated so that a shared machine's changing load hits them alike.

    samples = repeat(fn, repeats=5)               # Samples: .median, .cpu_median, .medians, .min (s)
    times = alternated({"a": fa, "b": fb}, 7)     # {name: Samples}, the order reversed every round

Pure Python and numpy-free, so the peers' venvs import it too; a call's result is waited for with
``jax.block_until_ready`` where jax is installed (asynchronous dispatch would otherwise time the
launch, not the work).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

try:
    from jax import block_until_ready as _wait
except ImportError:  # a peer's venv without jax: calls are synchronous

    def _wait(x):
        return x


@dataclass(frozen=True)
class Samples:
    """Seconds of repeated calls: wall (perf_counter) and CPU (this process, all its threads; on
    a shared machine wall time includes waiting for a core, CPU time much less)."""

    wall: tuple
    cpu: tuple

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    @property
    def medians(self) -> tuple[float, float]:
        """(wall, CPU) medians."""
        return self.median, self.cpu_median

    @property
    def min(self) -> float:
        return min(self.wall)


def call_time(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call of ``fn()``, to the end of its work."""
    t, c = time.perf_counter(), time.process_time()
    _wait(fn())
    return time.perf_counter() - t, time.process_time() - c


def alternated(fns: dict, repeats: int, warmup: int = 1) -> dict[str, Samples]:
    """Each of ``fns`` (name -> function of no arguments) called ``warmup`` times (compilation,
    first touch of memory), then all of them in turn ``repeats`` times, the order reversed every
    other round."""
    for fn in fns.values():
        for _ in range(warmup):
            _wait(fn())
    out = {name: [] for name in fns}
    names = list(fns)
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(call_time(fns[name]))
    return {name: Samples(tuple(w for w, _ in t), tuple(c for _, c in t)) for name, t in out.items()}


def repeat(fn, repeats: int, warmup: int = 1) -> Samples:
    """``fn()`` timed ``repeats`` times after ``warmup`` calls."""
    return alternated({"fn": fn}, repeats, warmup)["fn"]
