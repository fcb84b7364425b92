"""Shared test setup. Tests run with 64-bit JAX enabled so the physics battery can work in float64;
library code therefore always states its dtypes explicitly (float32 unless config says float64)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite/xTB is 10-100x slower with threads here
# predict and the CLI turn on JAX's persistent compilation cache: keep the tests' out of ~/.cache
import tempfile  # noqa: E402

os.environ.setdefault("NNPES_COMPILE_CACHE", tempfile.mkdtemp(prefix="nnpes-test-jax-cache-"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
