"""Models people can share: the model card in every saved model (``nnpes.potential.card``),
``nnpes info MODEL``, a short ``repr(Potential)`` and saved files readable by others."""

from __future__ import annotations

import os
import stat

import pytest

from nnpes.files import atomic_write, current_umask


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write(tmp_path / "new", b"x")
        (tmp_path / "old").write_bytes(b"")
        os.chmod(tmp_path / "old", 0o600)
        atomic_write(tmp_path / "old", b"y")  # replacing a file: the new one gets the default mode too
    finally:
        os.umask(old)
    assert current_umask() == old
    for name in ("new", "old"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
