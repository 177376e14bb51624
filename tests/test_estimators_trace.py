"""Trace estimators: calibrated standard errors over 100 keys, jit, dtypes, operator forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkspec._testing import digits_ntk, power_law
from ntkspec.estimators import as_operator, hutchinson, hutchpp, xnystrace, xtrace

ESTIMATORS = {
    "hutchinson": hutchinson,
    "hutchpp": hutchpp,
    "xtrace": xtrace,
    "xnystrace": xnystrace,
}


@functools.cache
def _batched(name: str, num_matvecs: int):
    """One compiled function per estimator: (kernel, keys) -> estimates over keys.

    `lax.map` rather than `vmap`: batched QR is slow on CPU, and the loop compiles just as once.
    """
    estimator = ESTIMATORS[name]

    def run(kernel, keys):
        return jax.lax.map(lambda key: estimator(kernel, key, num_matvecs=num_matvecs), keys)

    return jax.jit(run)


def _kernels():
    return {f"alpha={a}": power_law(a, 300)[0] for a in (0.5, 1.0, 2.0)} | {
        "digits NTK": digits_ntk(num_samples=30)
    }


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_two_stderr_coverage_over_100_keys(name):
    keys = jax.random.split(jax.random.key(7), 100)
    for label, kernel in _kernels().items():
        exact = np.trace(kernel)
        result = _batched(name, 48)(jnp.asarray(kernel), keys)
        err = np.abs(np.asarray(result.value) - exact)
        coverage = np.mean(err <= 2 * np.asarray(result.stderr))
        assert coverage >= 0.85, (name, label, coverage)
        assert np.all(np.asarray(result.matvecs) == 48)


@pytest.mark.parametrize("name", ["hutchpp", "xnystrace"])
def test_low_rank_estimators_beat_hutchinson_on_decaying_spectrum(name):
    keys = jax.random.split(jax.random.key(3), 100)
    kernel = jnp.asarray(power_law(2.0, 300)[0])
    exact = float(jnp.trace(kernel))
    rmse = {
        n: np.sqrt(np.mean((np.asarray(_batched(n, 48)(kernel, keys).value) / exact - 1) ** 2))
        for n in ("hutchinson", name)
    }
    assert rmse[name] < rmse["hutchinson"] / 10


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_dtypes_and_operator_forms_agree(name, dtype, key):
    kernel = jnp.asarray(power_law(1.0, 300)[0], dtype)
    estimator = ESTIMATORS[name]
    from_array = jax.jit(lambda k, key: estimator(k, key, num_matvecs=30))(kernel, key)
    from_operator = estimator(as_operator(kernel), key, num_matvecs=30)
    from_callable = estimator(lambda v: kernel @ v, key, num_matvecs=30, n=300, dtype=dtype)
    rtol = 1e-5 if dtype == jnp.float32 else 1e-12
    for other in (from_operator, from_callable):
        np.testing.assert_allclose(other.value, from_array.value, rtol=rtol)
    exact = float(jnp.trace(kernel.astype(jnp.float64)))
    assert abs(float(from_array.value) - exact) <= 4 * float(from_array.stderr) + 1e-4 * exact


def test_rank_deficient_kernel_gives_exact_trace_without_nan(key):
    g = jax.random.normal(key, (200, 5))
    kernel = g @ g.T
    for name in ("xtrace", "xnystrace", "hutchpp"):
        result = ESTIMATORS[name](kernel, key, num_matvecs=30)
        assert np.isfinite(float(result.value)) and np.isfinite(float(result.stderr))
        np.testing.assert_allclose(result.value, jnp.trace(kernel), rtol=1e-8)


def test_bad_input_names_the_argument(key):
    kernel = jnp.eye(10)
    with pytest.raises(ValueError, match="num_matvecs"):
        hutchinson(kernel, key, num_matvecs=1)
    with pytest.raises(ValueError, match="num_matvecs"):
        xnystrace(kernel, key, num_matvecs=11)
    with pytest.raises(ValueError, match="n, dtype"):
        hutchpp(lambda v: v, key, num_matvecs=9)
    with pytest.raises(ValueError, match="square"):
        xtrace(jnp.ones((3, 4)), key, num_matvecs=4)
