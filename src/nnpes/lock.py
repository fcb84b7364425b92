"""One run per run directory: an OS file lock on ``RUN/.lock`` held for the life of a run.

``lock_run_dir(run_dir)`` takes an exclusive ``fcntl.flock`` on ``RUN/.lock`` without waiting and
writes the holder's pid, host and start time into the file; a second run on the same directory
(``nnpes train``, ``nnpes active-learn``, ``nnpes.training.train`` in Python) fails at once with
``RunDirInUse``: "run directory RUN is in use by pid N on HOST (started at T); wait for it or
choose another --run-dir". The OS drops the lock when the holder exits in any way, ``kill -9``
included, so a lock file left behind never blocks (its contents are only the last holder's
record). The file itself is never deleted: deleting a lock file lets two processes lock two
different files of the same name.

Within one process the lock is re-entrant for the thread that holds it (the committee trainer and
the active-learning driver take it again in nested calls); another thread of the same process is
refused like another process. A child process forked without ``exec`` shares the lock while it
lives (Python's ``subprocess`` and ``spawn`` workers do not inherit it).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nnpes.files import ensure_writable_dir

try:
    import fcntl
except ImportError:  # not POSIX: no OS lock (runs are then not protected from each other)
    fcntl = None

LOCK_FILE = ".lock"


class RunDirInUse(ValueError):
    """Another run (another process, or another thread of this one) holds the run directory."""


@dataclass
class _Held:
    file: object
    thread: int
    depth: int


_held: dict[str, _Held] = {}  # resolved run directory → the open, locked lock file
_guard = threading.Lock()


def holder(run_dir) -> dict:
    """What the lock file of ``run_dir`` says about its (last) holder: pid, host, started; {} if
    nothing readable is there."""
    try:
        info = json.loads((Path(run_dir) / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _in_use(run_dir: Path, info: dict) -> RunDirInUse:
    who = f"pid {info['pid']}" if info.get("pid") is not None else "another process"
    if info.get("host"):
        who += f" on {info['host']}"
    if info.get("started"):
        who += f" (started at {info['started']})"
    return RunDirInUse(f"run directory {run_dir} is in use by {who}; wait for it or choose another --run-dir")


class RunDirUnusable(ValueError):
    """The run directory cannot be created or written (read-only, a file in the way, ...)."""


def _unusable(run_dir: Path, err: OSError) -> RunDirUnusable:
    return RunDirUnusable(f"run directory {run_dir} cannot be written ({err.strerror or err}); "
                     "choose another --run-dir or make it writable")


class RunDirLock:
    """The lock of one run directory; ``release()`` (or leaving the ``with`` block, or dropping the
    object) gives it back."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self._key: str | None = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> "RunDirLock":
        """Create the directory if needed and lock it; ``RunDirInUse`` if another run holds it."""
        if self._key is not None:
            return self
        try:
            ensure_writable_dir(self.run_dir)  # a run writes many files there
        except OSError as e:
            raise _unusable(self.run_dir, e) from e
        key = str(self.run_dir.resolve())
        with _guard:
            held = _held.get(key)
            if held is not None:
                if held.thread != threading.get_ident():
                    raise _in_use(self.run_dir, holder(self.run_dir))
                held.depth += 1
            else:
                _held[key] = _Held(self._lock_file(), threading.get_ident(), 1)
        self._key = key
        return self

    def _lock_file(self):
        # opened without truncating: the holder's record is cleared only once the lock is ours
        try:
            f = os.fdopen(os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666), "r+")
        except OSError as e:
            raise _unusable(self.run_dir, e) from e
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise _in_use(self.run_dir, holder(self.run_dir)) from None
            except BaseException:
                f.close()
                raise
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}) + "\n")
        f.flush()
        return f

    def release(self) -> None:
        key, self._key = self._key, None
        if key is None:
            return
        with _guard:
            held = _held.get(key)
            if held is None:
                return
            held.depth -= 1
            if held.depth == 0:
                del _held[key]
                held.file.close()  # closing the last descriptor drops the flock

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def lock_run_dir(run_dir) -> RunDirLock:
    """Lock ``run_dir`` for this run (see the module docstring); returns the held ``RunDirLock``."""
    return RunDirLock(run_dir).acquire()
