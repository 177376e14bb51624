"""Kernel regression: Cholesky against numpy.linalg.solve, preconditioned CG on operators against the
dense solve, the preconditioner's effect, cross-kernel predictions, the pseudo-NTK, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference_models import ReluMLP

import ntkspec
from ntkspec import infinite, models, regression
from ntkspec._testing import nnx_reference
from ntkspec.estimators import as_operator

N, C, D_IN = 12, 3, 5  # reference_models' ReluMLP: 5 inputs, 3 outputs


def _psd(n, rank, seed):
    a = np.random.default_rng(seed).normal(size=(n, rank))
    return a @ a.T


@pytest.fixture(scope="module")
def model():
    return ReluMLP(nnx.Rngs(0), width=16, dtype=jnp.float64)


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (N, D_IN), jnp.float64)


@pytest.fixture(scope="module")
def x_test():
    return jax.random.normal(jax.random.key(2), (4, D_IN), jnp.float64)


@pytest.mark.parametrize("columns", [None, 3])
def test_cholesky_matches_numpy(columns):
    k = _psd(40, 60, 0)
    shape = (40,) if columns is None else (40, columns)
    y = np.random.default_rng(1).normal(size=shape)
    result = regression.fit(jnp.asarray(k), jnp.asarray(y), ridge=0.1)
    want = np.linalg.solve(k + 0.1 * np.eye(40), y)
    assert result.method == "cholesky" and result.converged and result.status == "converged"
    assert result.coefficients.shape == shape and result.coefficients.dtype == jnp.float64
    np.testing.assert_allclose(result.coefficients, want, rtol=1e-8, atol=1e-8 * np.abs(want).max())
    assert result.residual < 1e-12
    k_star = np.random.default_rng(2).normal(size=(5, 40))
    np.testing.assert_allclose(result.predict(jnp.asarray(k_star)), k_star @ want, rtol=1e-8)


def _operators(model, x):
    """(name, operator, dense kernel as float64 numpy) for each kind of operator `fit` takes."""
    op = ntkspec.ntk(model, x, chunk_size=5, probe_block=4)
    k = nnx_reference(model, x)
    s = 1 / np.sqrt(np.diag(k))
    k_inf = infinite.mlp_operator(x, (D_IN, 40, 30), C)
    return [
        ("ntk", op, k),
        ("cosine", op.normalized(), s[:, None] * k * s[None, :]),
        ("dense", as_operator(jnp.asarray(k)), k),
        ("infinite", k_inf, np.asarray(k_inf.dense())),
    ]


@pytest.mark.parametrize("index", range(4), ids=["ntk", "cosine", "dense", "infinite"])
def test_pcg_on_operators_matches_the_dense_solve(model, x, index):
    name, op, k = _operators(model, x)[index]
    ridge = 1e-3 * np.trace(k) / k.shape[0]
    y = np.random.default_rng(3).normal(size=(k.shape[0], 2))
    result = regression.fit(op, jnp.asarray(y), ridge=ridge, key=jax.random.key(0), rank=8, block_size=4)
    want = np.linalg.solve(k + ridge * np.eye(k.shape[0]), y)
    assert result.method == "pcg" and result.converged, result
    assert result.preconditioner_rank == 8 and 0 < result.iterations <= 2 * k.shape[0]
    assert np.abs(np.asarray(result.coefficients) - want).max() < 1e-6 * np.abs(want).max(), name
    if name in ("dense", "infinite"):  # the unpreconditioned loop on one column (cheap operators)
        single = regression.fit(op, jnp.asarray(y[:, 0]), ridge=ridge, method="cg")
        assert single.coefficients.shape == (k.shape[0],) and single.preconditioner_rank == 0
        assert np.abs(np.asarray(single.coefficients) - want[:, 0]).max() < 1e-6 * np.abs(want).max()


def test_preconditioner_cuts_iterations():
    """On an ill-conditioned eNTK (N·C = 400 rows), RPCholesky of rank 64 cuts CG iterations."""
    x = jax.random.uniform(jax.random.key(4), (40, 20), jnp.float64)
    net = models.build("mlp", (20,), 10, jax.random.key(5), width=64, depth=3, param_dtype=jnp.float64)
    op = as_operator(ntkspec.ntk(net, x).dense())  # the kernel's conditioning is what matters here
    y = jax.nn.one_hot(jnp.arange(40) % 10, 10, dtype=jnp.float64).reshape(-1)
    ridge = 1e-4 * float(jnp.mean(op.diagonal()))
    plain = regression.fit(op, y, ridge=ridge, method="cg")
    pre = regression.fit(op, y, ridge=ridge, key=jax.random.key(0), rank=64)
    assert plain.converged and pre.converged, (plain, pre)
    assert pre.iterations < 0.6 * plain.iterations, (pre.iterations, plain.iterations)


def test_not_converged_says_so():
    k = _psd(200, 200, 6) + 1e-9 * np.eye(200)
    result = regression.fit(as_operator(jnp.asarray(k)), jnp.ones(200), method="cg", max_iterations=3)
    assert not result.converged and result.status == "max_iterations" and result.iterations == 3
    assert result.residual > result.tol


def test_unattainable_tolerance_says_stagnated():
    k = _psd(50, 60, 0)
    result = regression.fit(as_operator(jnp.asarray(k)), jnp.ones(50), method="cg", tol=1e-17)
    assert not result.converged and result.status == "stagnated" and result.iterations < 1000
    assert result.residual < 1e-12  # as far as float64 goes


def test_indefinite_operator_breaks_down():
    k = np.array([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1, positive diagonal
    result = regression.fit(as_operator(jnp.asarray(k)), jnp.array([1.0, 0.0]), method="cg")
    assert not result.converged and result.status == "breakdown"


def test_cross_kernel_predictions_equal_dense(model, x, x_test):
    both = jnp.concatenate([x, x_test])
    k_all = nnx_reference(model, both)
    rows = slice(N * C, None), slice(0, N * C)
    op = ntkspec.ntk(model, x, chunk_size=5, probe_block=2)
    v = np.random.default_rng(4).normal(size=(N * C, 3))
    cross = regression.cross_kernel(op, x_test)
    assert cross.shape == (4 * C, N * C)
    np.testing.assert_allclose(cross.matvec(jnp.asarray(v)), k_all[rows] @ v, rtol=1e-10)
    d = np.diag(k_all)
    cosine = k_all / np.sqrt(d[:, None] * d[None, :])
    cosine_cross = regression.cross_kernel(op.normalized(), x_test)
    np.testing.assert_allclose(cosine_cross.matvec(jnp.asarray(v)), cosine[rows] @ v, rtol=1e-10)
    y = np.random.default_rng(5).normal(size=N * C)
    result = regression.fit(op, jnp.asarray(y), ridge=1e-2, key=jax.random.key(0))
    dense = regression.fit(jnp.asarray(k_all[: N * C, : N * C]), jnp.asarray(y), ridge=1e-2)
    np.testing.assert_allclose(result.predict(cross), dense.predict(jnp.asarray(k_all[rows])), rtol=1e-6)


def test_pseudo_ntk_is_the_gradient_of_the_scaled_sum(model, x, x_test):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def g(p, x):
        return jnp.sum(nnx.merge(graphdef, p, rest)(x), axis=1) / jnp.sqrt(C)

    def jacobian(x):
        jac = jax.jacrev(g)(params, x)
        return np.concatenate([np.asarray(j).reshape(j.shape[0], -1) for j in jax.tree.leaves(jac)], 1)

    j_train, j_test = jacobian(x), jacobian(x_test)
    op = regression.pseudo_ntk(model, x)
    assert op.shape == (N, N)
    want = j_train @ j_train.T
    np.testing.assert_allclose(op.dense(), want, rtol=1e-10)
    v = np.random.default_rng(6).normal(size=(N, 2))
    np.testing.assert_allclose(op.matvec(jnp.asarray(v)), want @ v, rtol=1e-10)
    np.testing.assert_allclose(op.diagonal(), np.diag(want), rtol=1e-10)
    np.testing.assert_allclose(
        regression.cross_kernel(op, x_test).matvec(jnp.asarray(v)), j_test @ j_train.T @ v, rtol=1e-10
    )
    # (N, C) targets regress on the N x N pseudo-NTK in one solve
    y = np.random.default_rng(7).normal(size=(N, C))
    result = regression.fit(op, jnp.asarray(y), ridge=1e-2, key=jax.random.key(0))
    np.testing.assert_allclose(result.coefficients, np.linalg.solve(want + 1e-2 * np.eye(N), y), rtol=1e-6)


def test_rpcholesky_recovers_a_low_rank_kernel():
    k = _psd(30, 5, 8)
    low = regression.rpcholesky(jnp.asarray(k), jax.random.key(0), rank=10, block_size=5)
    assert low.factor.shape == (30, 10)
    np.testing.assert_allclose(low.factor @ low.factor.T, k, atol=1e-9 * np.abs(k).max())
    assert float(low.residual_trace) < 1e-9 * np.trace(k)


def test_float32_default_tolerance():
    k = jnp.asarray(_psd(30, 40, 9), jnp.float32)
    result = regression.fit(as_operator(k), jnp.ones(30, jnp.float32), ridge=1.0, key=jax.random.key(0))
    assert result.tol == 1e-3 and result.converged and result.coefficients.dtype == jnp.float32


@pytest.mark.parametrize(
    ("kernel", "targets", "options", "match"),
    [
        (np.full((3, 3), np.nan), np.ones(3), {}, "non-finite"),
        (np.eye(3), np.array([1.0, np.inf, 0.0]), {}, "non-finite"),
        (np.eye(3), np.ones(4), {}, "one row per kernel row"),
        (np.eye(3), np.ones((3, 2, 1)), {}, "`targets`"),
        (np.eye(3), np.ones(3), {"ridge": -1.0}, "`ridge`"),
        (np.eye(3), np.ones(3), {"ridge": float("nan")}, "`ridge`"),
        (np.diag([1.0, -2.0, 3.0]), np.ones(3), {}, "Cholesky"),
        (np.array([[1.0, 0.5], [-0.5, 1.0]]), np.ones(2), {}, "symmetric"),
        (np.ones((3, 2)), np.ones(3), {}, "square"),
        (np.eye(3), np.ones(3), {"method": "lu"}, "`method`"),
        (np.eye(3), np.ones(3), {"method": "pcg"}, "`key`"),
        (np.eye(3), np.ones(3), {"tol": 0.0}, "`tol`"),
        (np.eye(3), np.ones(3), {"method": "cg", "max_iterations": 0}, "`max_iterations`"),
    ],
)
def test_bad_input(kernel, targets, options, match):
    with pytest.raises(ValueError, match=match):
        regression.fit(jnp.asarray(kernel), jnp.asarray(targets), **options)


def test_bad_operator_input(model, x):
    op = ntkspec.ntk(model, x)
    with pytest.raises(ValueError, match="Y.reshape"):
        regression.fit(op, jnp.ones((N, C)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="negative diagonal"):
        regression.fit(as_operator(-jnp.eye(3)), jnp.ones(3), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`cross_kernel`"):
        regression.fit(jnp.eye(3), jnp.ones(3)).predict(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="NTKOperator"):
        regression.cross_kernel(as_operator(jnp.eye(3)), x)
    with pytest.raises(ValueError, match="goes to .predict"):
        regression.fit(regression.cross_kernel(op, x[:2]), jnp.ones(N * C), key=jax.random.key(0))
    with pytest.raises(ValueError, match="inputs like x"):
        regression.cross_kernel(op, x[:, :2])
