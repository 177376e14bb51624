"""Block Lanczos with full reorthogonalisation (Lanczos 1950; Golub & Underwood 1977).

From an (n, b) start block Ω, s steps build an orthonormal basis Q = [Q₁ … Q_s] of the block Krylov
space span{Ω, KΩ, …, K^{s−1}Ω} and the block tridiagonal T = QᵀKQ:

    K Q_j = Q_{j−1} B_{j−1}ᵀ + Q_j A_j + Q_{j+1} B_j,    A_j = Q_jᵀ K Q_j,

with K Q = Q T + Q_{s+1} B_s E_sᵀ. b = 1 is the classical Lanczos process. Departure from the
textbook three-term recurrence: every new block is orthogonalised against the whole basis twice
(classical Gram–Schmidt, twice is enough: Giraud et al. 2005), since without it ghost copies of
converged Ritz values appear within tens of steps in float32 and float64 alike. A block that
breaks down (an invariant subspace was found) is replaced by orthonormal directions with zero
coupling, which keeps T = QᵀKQ exact. The basis and matvecs stay in the working dtype; T is
returned in float64 where JAX has x64 enabled (float32 otherwise).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ntkspec._errors import bad_value, describe
from ntkspec.estimators._common import (
    as_block_matvec,
    check_positive_int,
    fori_loop,
    loops_in_python,
    projected_dtype,
)


class LanczosDecomposition(NamedTuple):
    """Result of `block_lanczos`.

    basis : (n, s·b) orthonormal Q.
    tridiagonal : (s·b, s·b) symmetric block tridiagonal T = QᵀKQ (projected dtype).
    next_block : (n, b) Q_{s+1}, orthonormal to Q.
    next_coupling : (b, b) B_s, with K Q = Q T + Q_{s+1} B_s E_sᵀ.
    matvecs : s·b.
    """

    basis: jax.Array
    tridiagonal: jax.Array
    next_block: jax.Array
    next_coupling: jax.Array
    matvecs: int


def block_lanczos(op, start, *, num_steps: int, n=None, dtype=None) -> LanczosDecomposition:
    """`num_steps` steps of block Lanczos, fully (doubly) reorthogonalised, from `start` (n, b).

    `start` should have full column rank; it is orthonormalised first. Costs s·b matvecs. The steps
    run in a `fori_loop`, or from Python for an operator that `loops_in_python`.
    """
    matvec, n, dtype = as_block_matvec(op, n, dtype)
    s = check_positive_int("num_steps", num_steps)
    if start.ndim != 2 or start.shape[0] != n:
        raise bad_value("start", describe(start), f"a block of shape ({n}, b)")
    b = start.shape[1]
    if (s + 1) * b > n:
        raise bad_value(
            "num_steps",
            s,
            f"(num_steps + 1) · b <= n = {n} for b = {b}",
            "Take fewer steps, or diagonalise the kernel exactly.",
        )
    proj = projected_dtype()
    first, _ = _orthonormalise(start.astype(dtype))
    basis = jnp.zeros((n, (s + 1) * b), dtype).at[:, :b].set(first)

    def step(j, carry):
        basis, diag_blocks, sub_blocks = carry
        block = jax.lax.dynamic_slice_in_dim(basis, j * b, b, axis=1)
        w = matvec(block)
        a = block.T @ w
        # Unfilled columns of `basis` are zero: projecting on all of it projects on Q_{1..j}.
        w = _orthogonalise(basis, w)
        new, coupling = _orthonormalise(w)
        # Breakdown guard: re-orthogonalise the QR factor itself (its columns are arbitrary where w
        # vanished) and fold the second factor into the coupling, which is then ~0 there.
        new, second = _orthonormalise(_orthogonalise(basis, new))
        coupling = second @ coupling
        basis = jax.lax.dynamic_update_slice_in_dim(basis, new, (j + 1) * b, axis=1)
        diag_blocks = diag_blocks.at[j].set(((a + a.T) / 2).astype(proj))
        sub_blocks = sub_blocks.at[j].set(coupling.astype(proj))
        return basis, diag_blocks, sub_blocks

    init = (basis, jnp.zeros((s, b, b), proj), jnp.zeros((s, b, b), proj))
    basis, diag_blocks, sub_blocks = fori_loop(0, s, step, init, loops_in_python(op))
    return LanczosDecomposition(
        basis=basis[:, : s * b],
        tridiagonal=assemble_block_tridiagonal(diag_blocks, sub_blocks[:-1]),
        next_block=basis[:, s * b :],
        next_coupling=sub_blocks[-1],
        matvecs=s * b,
    )


def assemble_block_tridiagonal(diag_blocks: jax.Array, sub_blocks: jax.Array) -> jax.Array:
    """Dense (s·b, s·b) matrix from blocks A (s, b, b) on and B (s−1, b, b) below the diagonal."""
    s, b, _ = diag_blocks.shape
    t = jnp.zeros((s, b, s, b), diag_blocks.dtype)
    idx = jnp.arange(s)
    t = t.at[idx, :, idx, :].set(diag_blocks)
    t = t.at[idx[1:], :, idx[:-1], :].set(sub_blocks)
    t = t.at[idx[:-1], :, idx[1:], :].set(jnp.swapaxes(sub_blocks, 1, 2))
    return t.reshape(s * b, s * b)


def _orthogonalise(basis: jax.Array, w: jax.Array) -> jax.Array:
    """w − Q(Qᵀw), applied twice (classical Gram–Schmidt with reorthogonalisation)."""
    w = w - basis @ (basis.T @ w)
    return w - basis @ (basis.T @ w)


def _orthonormalise(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Thin QR of w (n, b). For b = 1 a normalisation (a zero vector stays zero): it is cheaper, and
    batched QR is slow on CPU when single-vector Lanczos runs are vmapped over probes."""
    if w.shape[1] > 1:
        return jnp.linalg.qr(w)
    norm = jnp.linalg.norm(w)
    tiny = jnp.finfo(w.dtype).tiny
    return jnp.where(norm > tiny, w / jnp.where(norm > tiny, norm, 1.0), 0.0), norm.reshape(1, 1)
