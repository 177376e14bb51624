"""Top-k eigenpairs of a PSD operator: thick-restarted, fully reorthogonalised block Lanczos.

Each cycle expands an orthonormal basis V block by block (V ← [V, N], N = orth((I − VVᵀ)K N_prev),
twice-orthogonalised), keeping KV so that the Rayleigh–Ritz matrix H = VᵀKV and the residuals
‖Kyᵢ − θᵢyᵢ‖ are explicit. When the basis is full, it restarts thickly (Wu & Simon 2000; Stewart's
Krylov–Schur 2001, block form): V ← the top p Ritz vectors Y, KV ← KY (no matvecs), and the
expansion continues from the last block N, since KY − YΘ lies in span(N). Cycles repeat until the
top-k residuals are ≤ tol·θ₁ or the matvec budget is spent. Block size ≥ C (the number of network
outputs) is recommended for NTKs, whose top eigenvalues come in near-degenerate multiplets of size
C; pick k at a multiplet boundary. Ritz values are clipped at 0 (K is PSD; negatives are round-off).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ntkspec._errors import bad_value
from ntkspec.estimators._common import (
    as_block_matvec,
    check_positive_int,
    loops_in_python,
    projected_dtype,
    while_loop,
)


class Eigenpairs(NamedTuple):
    """Top-k eigenpairs: `values` (k,) descending, `vectors` (n, k), `residuals` (k,) = ‖Kv − θv‖,
    `matvecs` used, `converged` (all residuals ≤ tol·θ₁), `restarts` made."""

    values: jax.Array
    vectors: jax.Array
    residuals: jax.Array
    matvecs: jax.Array
    converged: jax.Array
    restarts: jax.Array


def top_eigenpairs(
    op,
    key,
    *,
    k: int,
    block_size: int = 10,
    budget: int = 400,
    max_basis: int | None = None,
    tol: float | None = None,
    n=None,
    dtype=None,
) -> Eigenpairs:
    """Top-`k` eigenpairs by thick-restarted block Lanczos, at most `budget` matvecs.

    Parameters
    ----------
    op : square array, operator with `.matvec`, or block-matvec callable (then `n=`, `dtype=`).
    key : PRNG key for the Gaussian start block.
    k : number of eigenpairs.
    block_size : b, columns per Krylov step (≥ C for an NTK with C outputs).
    budget : largest number of matvecs to spend (whole blocks).
    max_basis : basis columns before a restart (default: min(budget, 20·b, n − b), whole blocks,
        widened to the k kept vectors plus one block where k needs more, up to n − b).
    tol : convergence when every top-k residual ≤ tol·θ₁ (default: 10·√n·eps of the dtype). The
        computed residuals cannot fall much below √n·eps·θ₁, the rounding of a matvec, and grow a
        little with each restart (KY is carried, not recomputed): a float64 kernel of n = 400 stalled
        at 11–20 eps after 13–28 restarts (unoptimised XLA:CPU), where a 10·eps default never converged.

    The loops are `while_loop`s, or stepped from Python for an operator that `loops_in_python`.
    """
    matvec, n, dtype = as_block_matvec(op, n, dtype)
    k = check_positive_int("k", k)
    b = check_positive_int("block_size", block_size)
    budget = check_positive_int("budget", budget, b)
    if max_basis is None:
        room = -(-(k + b) // b) * b  # the k kept Ritz vectors and one block, in whole blocks
        cols = min(n - b, max(min(budget, 20 * b), room))
    else:
        cols = max_basis
    cols = check_positive_int("max_basis", cols, 1) // b * b
    keep = min(cols - b, max(k, cols // 2))
    if keep < k or cols > n - b:
        raise bad_value(
            "max_basis",
            max_basis,
            f"room for the k = {k} kept Ritz vectors plus one block of {b} within n = {n} rows",
            "Raise max_basis (or the budget), or lower k.",
        )
    tol = float(10 * n**0.5 * jnp.finfo(dtype).eps) if tol is None else float(tol)
    proj = projected_dtype()
    in_python = loops_in_python(op)

    start, _ = jnp.linalg.qr(jax.random.normal(key, (n, b), dtype))
    basis = jnp.zeros((n, cols), dtype)
    images = jnp.zeros((n, cols), dtype)

    def expand(state):
        basis, images, filled, block, used = state
        image = matvec(block)
        basis = jax.lax.dynamic_update_slice_in_dim(basis, block, filled, axis=1)
        images = jax.lax.dynamic_update_slice_in_dim(images, image, filled, axis=1)
        w = image - basis @ (basis.T @ image)
        w = w - basis @ (basis.T @ w)
        block, _ = jnp.linalg.qr(w)
        # Breakdown guard: where w vanished, QR's columns are arbitrary; orthogonalise them again.
        block, _ = jnp.linalg.qr(block - basis @ (basis.T @ block))
        return basis, images, filled + b, block, used + b

    def can_expand(state):
        _, _, filled, _, used = state
        return (filled + b <= cols) & (used + b <= budget)

    def ritz(basis, images):
        h = (basis.T @ images).astype(proj)
        theta, u = jnp.linalg.eigh((h + h.T) / 2)
        theta, u = theta[::-1], u[:, ::-1]
        u = u.astype(dtype)
        vectors = basis @ u[:, :keep]
        kv = images @ u[:, :keep]
        residuals = jnp.linalg.norm(kv - vectors * theta[:keep].astype(dtype), axis=0)
        return jnp.clip(theta[:keep], 0.0), vectors, kv, residuals

    def cycle(state):
        basis, images, filled, block, used, _, restarts, _ = state
        basis, images, filled, block, used = while_loop(
            can_expand, expand, (basis, images, filled, block, used), in_python
        )
        theta, vectors, kv, residuals = ritz(basis, images)
        converged = jnp.all(residuals[:k] <= tol * theta[0])
        # Thick restart: keep the top `keep` Ritz pairs, continue from the last block.
        basis = jnp.zeros_like(basis).at[:, :keep].set(vectors)
        images = jnp.zeros_like(images).at[:, :keep].set(kv)
        out = (theta, vectors, residuals)
        return basis, images, keep, block, used, converged, restarts + 1, out

    def go_on(state):
        *_, used, converged, _, _ = state
        return (~converged) & (used + b <= budget)

    empty = (jnp.zeros(keep, proj), jnp.zeros((n, keep), dtype), jnp.full(keep, jnp.inf, dtype))
    state = (basis, images, 0, start, 0, jnp.array(False), 0, empty)
    state = cycle(state)
    *_, used, converged, restarts, (theta, vectors, residuals) = while_loop(go_on, cycle, state, in_python)
    return Eigenpairs(
        values=theta[:k],
        vectors=vectors[:, :k],
        residuals=residuals[:k].astype(proj),
        matvecs=jnp.asarray(used),
        converged=converged,
        restarts=jnp.asarray(restarts - 1),
    )


def ritz_pairs(decomposition, k: int) -> Eigenpairs:
    """Top-k Ritz pairs of a `LanczosDecomposition`, residuals from K Q = Q T + Q_{s+1} B_s E_sᵀ.

    ‖K y − θ y‖ = ‖B_s U_{last block, i}‖ for y = Q uᵢ: no extra matvecs.
    """
    t = decomposition.tridiagonal
    b = decomposition.next_coupling.shape[0]
    theta, u = jnp.linalg.eigh(t)
    theta, u = theta[::-1][:k], u[:, ::-1][:, :k]
    residuals = jnp.linalg.norm(decomposition.next_coupling @ u[-b:], axis=0)
    vectors = decomposition.basis @ u.astype(decomposition.basis.dtype)
    return Eigenpairs(
        values=jnp.clip(theta, 0.0),
        vectors=vectors,
        residuals=residuals,
        matvecs=jnp.asarray(decomposition.matvecs),
        converged=jnp.asarray(True),
        restarts=jnp.asarray(0),
    )
