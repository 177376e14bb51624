"""Strict test setup: 8 simulated CPU devices (for the sharding tests), float64 enabled, a key fixture.

The suite's programs are small, so compiling them takes most of its time. Two settings cut that
(483 s to 340 s on 2 cores): LLVM's optimisation of the compiled code is off
(`--xla_backend_optimization_level=0`: the same IEEE arithmetic, run less fast; speed is measured
in benchmarks/, not here), and one persistent compilation cache is shared by the xdist workers, the
subprocesses the tests start and later runs (`JAX_COMPILATION_CACHE_DIR`; its key holds the
program, the flags and the JAX version; about 30 MB a run, left unbounded because JAX's size bound
made the workers no faster than without a cache; an entry read while another worker still
writes it only costs a compile: pyproject.toml lets that warning pass). Both are environment
variables, set here, at import, before anything imports jax, so that subprocesses inherit them; a
value already set is kept.
"""

import os
import tempfile
from pathlib import Path

flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in flags:
    flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
CACHE = Path(tempfile.gettempdir()) / "ntkspec-tests-jax-cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

# float64 is on for the whole suite so that references are exact; float32 tests pass float32 arrays
# explicitly, and ntkspec follows the dtype it is given.
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.key(0)
