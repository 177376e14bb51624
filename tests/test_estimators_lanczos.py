"""Block Lanczos: orthonormal basis, T = QᵀKQ, the Lanczos relation, breakdown, dtypes, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkspec._testing import power_law
from ntkspec.estimators import block_lanczos, ritz_pairs


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-6), (jnp.float64, 1e-13)])
@pytest.mark.parametrize("block", [1, 6])
def test_basis_orthonormal_and_relation_holds(dtype, tol, block, key):
    kernel = jnp.asarray(power_law(1.0, 300)[0], dtype)
    start = jax.random.normal(key, (300, block), dtype)
    dec = jax.jit(lambda k, s: block_lanczos(k, s, num_steps=30))(kernel, start)
    q, t = dec.basis, dec.tridiagonal
    assert q.dtype == dtype and t.dtype == jnp.float64 and dec.matvecs == 30 * block
    assert float(jnp.max(jnp.abs(q.T @ q - jnp.eye(q.shape[1])))) < 10 * tol
    np.testing.assert_allclose(q.T @ kernel @ q, t, atol=tol)
    # K Q = Q T + Q_{s+1} B_s E_sᵀ
    tail = jnp.zeros((block, q.shape[1]), dtype).at[:, -block:].set(dec.next_coupling.astype(dtype))
    residual = kernel @ q - q @ t.astype(dtype) - dec.next_block @ tail
    assert float(jnp.max(jnp.abs(residual))) < tol
    # Full reorthogonalisation: no ghost copies of the top eigenvalue.
    ritz = np.linalg.eigvalsh(np.asarray(t))[::-1]
    assert abs(ritz[1] - ritz[0]) > 0.1 * ritz[0]


def test_breakdown_on_low_rank_kernel_gives_no_nan(key):
    g = jax.random.normal(key, (200, 4))
    kernel = g @ g.T
    dec = block_lanczos(kernel, jax.random.normal(key, (200, 1)), num_steps=12)
    assert bool(jnp.all(jnp.isfinite(dec.tridiagonal)))
    ritz = ritz_pairs(dec, 4)
    np.testing.assert_allclose(ritz.values, np.linalg.eigvalsh(np.asarray(kernel))[::-1][:4], rtol=1e-10)


def test_rejects_too_many_steps(key):
    with pytest.raises(ValueError, match="num_steps"):
        block_lanczos(jnp.eye(20), jax.random.normal(key, (20, 5)), num_steps=4)
