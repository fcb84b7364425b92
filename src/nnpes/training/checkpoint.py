"""Training checkpoints: one msgpack file each (``latest.ckpt``, ``best.ckpt``), written atomically.

Why not orbax: a checkpoint here is a few MB of parameters plus optimiser state; one file written
to ``name.tmp``, fsync'ed and moved over the old one with ``os.replace`` (atomic on POSIX) gives the
guarantee we need — after ``kill -9`` at any instant the file is the old or the new checkpoint,
never half of one — without orbax's background threads, directory layouts and seconds of start-up
per save. Restoring needs a template state of the same structure (a freshly initialised one).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import serialization

from nnpes.files import atomic_write


def save_checkpoint(path: str | Path, state) -> None:
    """Write PyTree ``state`` to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = jax.tree_util.tree_map(np.asarray, jax.device_get(state))
    data = serialization.msgpack_serialize(serialization.to_state_dict(host))
    atomic_write(path, data)


def read_checkpoint(path: str | Path) -> dict:
    """The raw nested dict of a checkpoint (numpy leaves); clear error if unreadable."""
    path = Path(path)
    try:
        return serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise
    except Exception as e:  # a foreign or damaged file: say which
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e})") from None


def load_checkpoint(path: str | Path, template, raw: dict | None = None):
    """Read a checkpoint (or its ``raw`` dict) into the structure of ``template``; keys the template
    lacks are ignored; clear error if unreadable."""
    raw = read_checkpoint(path) if raw is None else raw
    try:
        return serialization.from_state_dict(template, raw)
    except Exception as e:
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {e})") from None
