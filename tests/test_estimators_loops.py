"""Estimators step their loops from Python for an operator that asks for it (a model that convolves,
on the CPU: jax-ml/jax#12868), with the same numbers as their compiled loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ntkspec
from ntkspec._testing import power_law
from ntkspec.estimators import as_operator, block_lanczos, krylov_spectrum, top_eigenpairs
from ntkspec.estimators._common import compiled, fori_loop, while_loop
from ntkspec.regression import fit, rpcholesky
from tests.reference_models import NNX_MODELS, inputs


class Stepped:
    """A dense kernel that asks for Python loops and counts the calls of its matvec (a compiled loop
    traces its body once; a stepped one calls it at every step)."""

    loops_in_python = True

    def __init__(self, kernel):
        self.inner = as_operator(kernel)
        self.shape, self.dtype = self.inner.shape, self.inner.dtype
        self.calls = 0

    def matvec(self, v):
        self.calls += 1
        return self.inner.matvec(v)

    def diagonal(self):
        return self.inner.diagonal()


@pytest.fixture
def kernel():
    return jnp.asarray(power_law(1.0, 120)[0])


def test_lanczos_steps_from_python(kernel, key):
    start = jax.random.normal(key, (120, 3), jnp.float64)
    op = Stepped(kernel)
    stepped = block_lanczos(op, start, num_steps=6)
    assert op.calls == 6
    reference = block_lanczos(kernel, start, num_steps=6)
    np.testing.assert_allclose(stepped.tridiagonal, reference.tridiagonal, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stepped.basis, reference.basis, atol=1e-12)


def test_top_eigenpairs_step_from_python_with_restarts(kernel, key):
    op = Stepped(kernel)
    stepped = top_eigenpairs(op, key, k=4, block_size=4, budget=200, max_basis=20)
    reference = jax.jit(lambda a, k: top_eigenpairs(a, k, k=4, block_size=4, budget=200, max_basis=20))(
        kernel, key
    )
    assert op.calls == int(stepped.matvecs) // 4
    assert int(stepped.restarts) == int(reference.restarts) >= 1
    assert int(stepped.matvecs) == int(reference.matvecs)
    np.testing.assert_allclose(stepped.values, reference.values, rtol=1e-12)
    np.testing.assert_allclose(stepped.residuals, reference.residuals, atol=1e-12)
    assert bool(stepped.converged) == bool(reference.converged)


def test_krylov_spectrum_steps_from_python(kernel, key):
    op = Stepped(kernel)
    trace = float(jnp.trace(kernel))
    stepped = krylov_spectrum(op, key, trace=trace, budget=100, block_size=5)
    reference = krylov_spectrum(kernel, key, trace=trace, budget=100, block_size=5)
    assert op.calls == 10 + 10  # 10 blocks of 5 columns (half the budget), then 10 steps of 5 probes
    for name in ("entropy", "entropy_stderr", "effective_rank", "trace_check", "eigenvalues"):
        np.testing.assert_allclose(getattr(stepped, name), getattr(reference, name), rtol=1e-10, err_msg=name)


def test_regression_steps_from_python(kernel, key):
    y = jax.random.normal(jax.random.key(1), (120, 2), jnp.float64)
    op = Stepped(kernel)
    stepped = fit(op, y, ridge=1e-3, key=key, rank=16, block_size=4)
    reference = fit(as_operator(kernel), y, ridge=1e-3, key=key, rank=16, block_size=4)
    assert stepped.converged and stepped.iterations == reference.iterations
    np.testing.assert_allclose(stepped.coefficients, reference.coefficients, rtol=1e-9)
    low = rpcholesky(Stepped(kernel), key, rank=16, block_size=4)
    np.testing.assert_allclose(low.factor, rpcholesky(kernel, key, rank=16, block_size=4).factor, atol=1e-12)


def test_under_a_trace_the_loops_stay_correct():
    """Under `jit`, a Python `fori_loop` unrolls and a `while_loop` whose condition is traced stays one."""

    def count(n):
        i = fori_loop(0, 3, lambda _, c: c + 1, n, True)
        return while_loop(lambda c: c < 10, lambda c: c + 2, i, True)

    assert count(0) == 11 and isinstance(count(0), int)  # 3, then 5, 7, 9, 11
    assert int(jax.jit(count)(jnp.asarray(0))) == 11


def test_compiled_runs_stepping_operators_eagerly(kernel):
    traced = []

    def fn(op, v):
        traced.append(isinstance(v, jax.core.Tracer))
        return op.matvec(v)

    run = compiled(fn)
    v = jnp.ones((120, 1))
    run(as_operator(kernel), v)
    run(Stepped(kernel), v)
    assert traced == [True, False]


def test_a_cnn_ntk_steps_from_python_on_the_cpu_and_matches_its_dense_kernel(key):
    module = NNX_MODELS["cnn"](nnx.Rngs(0), dtype=jnp.float64)
    op = ntkspec.ntk(module, inputs("cnn", 0, 12, jnp.float64), chunk_size=5, probe_block=4)
    mlp = ntkspec.ntk(
        NNX_MODELS["relu_mlp"](nnx.Rngs(0), dtype=jnp.float64), inputs("relu_mlp", 0, 12, jnp.float64)
    )
    assert op.loops_in_python == (jax.default_backend() == "cpu")
    assert not mlp.loops_in_python
    dense = op.dense()
    stepped = ntkspec.spectrum(op, method="stochastic", key=key, budget=80, top_k=5)
    reference = ntkspec.spectrum(dense, method="stochastic", key=key, budget=80, top_k=5)
    np.testing.assert_allclose(stepped.eigenvalues, reference.eigenvalues, rtol=1e-9)
    np.testing.assert_allclose(stepped.effective_rank, reference.effective_rank, rtol=1e-9)
    pairs = top_eigenpairs(op, key, k=5, block_size=5, budget=60)
    np.testing.assert_allclose(pairs.values, np.linalg.eigvalsh(dense)[::-1][:5], rtol=1e-6)
