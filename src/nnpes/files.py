"""Crash-safe file writes and YAML-safe values, shared by everything that saves state.

A file is written to a temporary name in the same directory, fsync'ed, and moved over the old one
with ``os.replace`` (atomic on POSIX), then the directory is fsync'ed: a ``kill -9`` at any moment
leaves either the old or the new file, never a torn one. The file gets the mode a plain ``open``
would give it, 0666 & ~umask (0644 under the usual umask 022), not ``mkstemp``'s private 0600, so
saved models and runs are readable by others unless the umask says otherwise.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``); where that is not
    available, set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0666 & ~umask."""
    return 0o666 & ~current_umask()


def atomic_write(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (creates parent directories); the file's mode is
    ``default_file_mode()``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so a file created or renamed in it survives a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, text.encode())


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def yaml_safe(x):
    """A copy that ``yaml.safe_dump`` accepts: tuples → lists, numpy scalars → Python."""
    if isinstance(x, dict):
        return {str(k): yaml_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [yaml_safe(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x
