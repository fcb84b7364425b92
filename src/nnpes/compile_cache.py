"""JAX's persistent compilation cache, on by default for the CLI and ``Potential.predict``.

A compiled model lands on disk, so the next process that needs the same shapes loads it instead
of compiling (issue 12: a second ``nnpes evaluate`` went from 48.5 s to 11 s). The directory is
``$NNPES_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/nnpes/jax`` (``~/.cache/nnpes/jax``);
``NNPES_COMPILE_CACHE=off`` (or the CLI's ``--compile-cache off``) disables it. A cache directory
the user already gave JAX (``JAX_COMPILATION_CACHE_DIR``, ``jax.config``) is left as it is.
JAX decides what to keep: compiles that took at least ``jax_persistent_cache_min_compile_time_secs``
(1 s by default).

Known noise (jaxlib 0.10, openxla/xla#44565): loading a cached CPU executable logs two
"Target machine feature +prefer-no-gather is not supported" lines although it was built on this
machine; the executable is used and correct (tuning flags, not instructions). The default
directory is per CPU type (``cpu_tag``), so it never serves one machine's code to another.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

ENV = "NNPES_COMPILE_CACHE"
OFF = frozenset({"off", "0", "none", "false", "no", ""})


def cpu_tag() -> str:
    """The machine's architecture and a short hash of its CPU model and flags. JAX's cache key does
    not name the host CPU, and XLA:CPU loads a cached executable built for another CPU with only a
    logged warning, so a home directory shared by a cluster's nodes must not share one cache."""
    text = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = "".join(line for line in f if line.startswith(("model name", "flags", "Features", "CPU part")))
    except OSError:
        text = platform.processor()
    return f"{platform.machine()}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/nnpes/jax/<cpu_tag()>`` (``~/.cache/nnpes/jax/x86_64-…``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nnpes" / "jax" / cpu_tag()


def enable(path: str | Path | None = None) -> Path | None:
    """Point JAX's persistent cache at ``path`` (None: ``$NNPES_COMPILE_CACHE`` or ``default_dir()``);
    ``"off"`` or ``NNPES_COMPILE_CACHE=off`` leaves it off. Returns the directory in use (None: off).
    Idempotent and cheap; a directory set for JAX by other means is kept."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    choice = str(path) if path is not None else os.environ.get(ENV)
    if choice is not None and choice.strip().lower() in OFF:
        if current and path is not None:
            jax.config.update("jax_compilation_cache_dir", None)
        return None
    if current and path is None:
        return Path(current)
    target = Path(choice).expanduser() if choice else default_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    return target


class CompileCounter:
    """Counts XLA compilations (and their seconds) in this process while active: a context
    manager, ``with CompileCounter() as c: ...; c.n, c.seconds``. Loading an executable from the
    persistent cache counts too (it also costs time and memory). Tests use it to prove that
    something compiles once; ``nnpes md`` reports its recompiles with it."""

    EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT

    def __init__(self):
        self.n, self.seconds = 0, 0.0

    def _listen(self, event: str, duration: float, **_):
        if event == self.EVENT:
            self.n += 1
            self.seconds += duration

    def __enter__(self) -> "CompileCounter":
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listen)
