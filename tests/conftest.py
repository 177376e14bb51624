"""Strict test setup: 8 simulated CPU devices (for the sharding tests), float64 enabled, a key fixture.

XLA_FLAGS must be set before JAX starts, so it is set here, at import, before anything imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

# float64 is on for the whole suite so that references are exact; float32 tests pass float32 arrays
# explicitly, and ntkspec follows the dtype it is given.
jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.key(0)
