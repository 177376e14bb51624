"""Top-k eigenpairs: float32/64 accuracy against eigh, restarts, residuals, NTK multiplets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkspec._testing import digits_ntk, exact_summary, power_law
from ntkspec.estimators import as_operator, top_eigenpairs


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.float64, 1e-11)])
@pytest.mark.parametrize("max_basis", [None, 40])
def test_top_eigenvalues_match_eigh(dtype, rtol, max_basis, key):
    kernel, lam = power_law(1.0, 400)
    op = as_operator(jnp.asarray(kernel, dtype))
    run = jax.jit(lambda o, k: top_eigenpairs(o, k, k=5, budget=300, max_basis=max_basis))
    result = run(op, key)
    assert bool(result.converged)
    np.testing.assert_allclose(result.values, lam[:5], rtol=rtol)
    explicit = jnp.linalg.norm(op.matvec(result.vectors) - result.vectors * result.values, axis=0)
    np.testing.assert_allclose(result.residuals, explicit, atol=10 * float(jnp.finfo(dtype).eps))
    assert int(result.matvecs) <= 300
    if max_basis is not None:
        assert int(result.restarts) >= 1


def test_ntk_multiplet_with_block_size_c(key):
    kernel = digits_ntk()
    exact = exact_summary(kernel)
    result = top_eigenpairs(jnp.asarray(kernel, jnp.float32), key, k=10, block_size=10, budget=200)
    np.testing.assert_allclose(result.values, exact["eigenvalues"][:10], rtol=1e-4)
    overlap = jnp.linalg.svd(result.vectors.astype(jnp.float64).T @ exact["eigenvectors"][:, :10])[1]
    assert float(jnp.min(overlap)) > 1 - 1e-4
