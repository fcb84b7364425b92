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
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

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


def ensure_writable_dir(path: str | Path) -> Path:
    """Create directory ``path`` if needed and check that files can be made in it; the OSError
    (a file in the way, read-only, no permission) is for the caller to name in its own words."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(path))
    return path


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


def atomic_write_dir(path: str | Path, fill: Callable[[Path], None], names: Sequence[str]) -> Path:
    """Replace directory ``path`` as a whole: ``fill(new)`` writes the files ``names`` into a new
    hidden sibling directory, which is then swapped in by one ``rename`` (Linux: an atomic
    exchange with the old one, ``renameat2(RENAME_EXCHANGE)``; elsewhere the old one is moved
    aside first, so a crash between the two renames leaves no directory, never a mixed one). Other
    entries of an existing ``path`` are copied into the new one. A crash before the swap leaves
    the old directory as it was and a ``.NAME.*.tmp`` directory (``remove_stale_tmp``)."""
    path = Path(path)
    if path.is_symlink():  # replace what the link points to, keep the link
        path = path.resolve()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a directory: save to a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(new, 0o777 & ~current_umask())
        if path.is_dir():  # keep what else the user put there
            for entry in path.iterdir():
                if entry.name not in names and not _is_tmp(entry):
                    (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, new / entry.name)
        fill(new)
        fsync_dir(new)
        if path.is_dir() and _exchange(new, path):  # new now holds the old directory
            shutil.rmtree(new)
        else:
            if path.is_dir():
                old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old.tmp"))
                os.replace(path, old / path.name)
                os.replace(new, path)
                shutil.rmtree(old)
            else:
                os.replace(new, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux ``renameat2`` with RENAME_EXCHANGE); False where
    the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        at_fdcwd, rename_exchange = -100, 2
        return libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    except (OSError, AttributeError):
        return False


def _is_tmp(p: Path) -> bool:
    return p.name.startswith(".") and p.name.endswith(".tmp")


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Remove the temporary files and directories (``.NAME.*.tmp``) that a crashed atomic write
    left in ``directory`` and its subdirectories one level down; returns what was removed. Call it
    only while no other process writes there (with the run directory locked)."""
    directory = Path(directory)
    found = [p for pattern in (".*.tmp", "*/.*.tmp") for p in directory.glob(pattern) if _is_tmp(p)]
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return found


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
