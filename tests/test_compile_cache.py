"""The persistent compilation cache (on by default for predict and the CLI) and --device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json, jax
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
from ase.build import bulk
import nnpes
pot = nnpes.build_potential({"name": "nequip", "elements": ["Cu"], "cutoff": 3.0, "num_layers": 1, "features": 4})
pot.predict(bulk("Cu", "fcc", a=3.6, cubic=True))
print(json.dumps({"hits": hits.count("/jax/compilation_cache/cache_hits"), "dir": jax.config.jax_compilation_cache_dir}))
"""


def _run(env_cache: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, NNPES_COMPILE_CACHE=env_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    cache = tmp_path / "cache"
    first = json.loads(_run(str(cache), "-c", SCRIPT).stdout.splitlines()[-1])
    assert first["dir"] == str(cache) and first["hits"] == 0 and any(cache.iterdir())
    second = json.loads(_run(str(cache), "-c", SCRIPT).stdout.splitlines()[-1])
    assert second["hits"] >= 1


def test_off_leaves_the_cache_off_and_a_users_own_directory_is_kept(tmp_path, monkeypatch):
    import jax

    from nnpes import compile_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("NNPES_COMPILE_CACHE", "off")
        assert compile_cache.enable() is None and jax.config.jax_compilation_cache_dir is None
        monkeypatch.delenv("NNPES_COMPILE_CACHE")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        assert compile_cache.enable() == tmp_path / "nnpes" / "jax" / compile_cache.cpu_tag()
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
        assert compile_cache.enable() == tmp_path / "mine"  # set by the user: kept
        assert compile_cache.enable("off") is None and jax.config.jax_compilation_cache_dir is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_cli_options_set_the_cache_and_refuse_a_missing_device(tmp_path):
    from nnpes.cli.main import build_parser

    args = build_parser().parse_args(["evaluate", "m", "d", "--compile-cache", "off", "--device", "cpu"])
    assert args.compile_cache == "off" and args.device == "cpu"
    ok = _run(str(tmp_path / "c"), "-m", "nnpes.cli.main", "info", "--device", "cpu", "--compile-cache", str(tmp_path / "cli"))
    assert ok.returncode == 0 and "cpu" in ok.stdout and (tmp_path / "cli").is_dir()
    bad = _run("off", "-m", "nnpes.cli.main", "info", "--device", "tpu")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("nnpes info: error: --device tpu: no such device")
    assert len(bad.stderr.strip().splitlines()) == 1
