"""Kernel (ridge) regression with any kernel of ntkspec: dense, matrix-free NTK, cosine, pseudo, K∞.

`fit(kernel, targets, ridge=λ)` solves (K + λI) A = Y for the coefficients A, one column per target,
and `fit(...).predict(K_*)` returns K(x*, X) A. Two methods:

* "cholesky" (dense arrays): K + λI = L Lᵀ in the array's precision (float64 when x64 is on); a
  kernel that is not positive definite is an error, not a silent answer.
* "pcg" (operators: `NTKOperator`, its `.normalized()` cosine kernel, `pseudo_ntk`, a dense operator,
  `ntkspec.infinite.mlp_operator`): conjugate gradients preconditioned by a randomly pivoted
  Cholesky approximation K ≈ F Fᵀ of rank r (Chen, Epperly, Tropp & Webber, "Randomly pivoted
  Cholesky", 2023, block variant), applied as P = F Fᵀ + ν I through its thin SVD F = U S Vᵀ:

      P^{-1} r = U (S² + ν)^{-1} Uᵀ r + ν^{-1} (r − U Uᵀ r),

  with ν = λ + tr(K − F Fᵀ)/n (λ alone, the choice of Díaz, Epperly, Frangella, Tropp & Webber,
  "Robust, randomized preconditioning for kernel ridge regression", 2023, leaves P singular at λ = 0;
  the residual's mean eigenvalue keeps it invertible and costs nothing: the exact diagonal gives
  it). RPCholesky needs only the exact diagonal (its pivot distribution) and r columns of K, taken
  as block products K E_S, so it runs on every operator here. "cg" is the same loop unpreconditioned.

The conjugate gradient loop is written here rather than taken from `jax.scipy.sparse.linalg.cg`,
which reports neither iterations nor residuals and treats a block of right-hand sides as one vector
(shared step sizes); here every column has its own step sizes and stops at its own tolerance, all
columns share one block matvec per iteration, and the returned residual is recomputed from K, not
taken from the recurrence (where the two have drifted apart, CG restarts from the true residual, and
says "stagnated" if that does not reach `tol`). A non-positive curvature pᵀ(K + λI)p ≤ 0 (a kernel
that is not PSD) stops that column and the result says "breakdown".

Operators for predictions and for the pseudo-NTK:

* `cross_kernel(op, x_test)`: K(x*, X) = J(x*) J(X)ᵀ of an `NTKOperator` (raw or cosine, or a
  pseudo-NTK), shape (M·C, N·C), as a matvec J(x*) (J(X)ᵀ V) from `jax.vjp` and `jax.jvp`,
  so that matrix-free predictions never form a kernel.
* `pseudo_ntk(model, ...)`: the NTK of g = Σ_c f_c / √C, an N×N kernel, C² smaller than the NTK
  and its leading part (Mohamadi, Bae & Sutherland, "A fast, well-founded approximation to the
  empirical neural tangent kernel", ICML 2023); an `NTKOperator` like any other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ntkspec._errors import bad_value, check_finite, describe
from ntkspec._typing import Key
from ntkspec.estimators._common import check_positive_int, compiled, fori_loop, loops_in_python, while_loop
from ntkspec.estimators.dense import as_operator
from ntkspec.model import validate
from ntkspec.operator import NTKOperator, _chunks, cosine_scale, ntk

METHODS = ("auto", "cholesky", "cg", "pcg")
DEFAULT_RANK = 128
DEFAULT_BLOCK = 32
DEFAULT_TOL = {8: 1e-6, 4: 1e-3}  # relative residual by itemsize: float64, float32
DEFAULT_MAX_ITERATIONS = 1000
RESTARTS = 5  # CG restarts from the true residual when the recurrence has drifted below it
_HIGHEST = jax.lax.Precision.HIGHEST


class KernelRegression(NamedTuple):
    """A fitted kernel regression: coefficients A with (K + ridge·I) A ≈ Y, and how they were found.

    `residual` is max over target columns of ‖(K + ridge·I) a − y‖ / ‖y‖, recomputed from the kernel;
    `converged` is residual <= `tol`. `status` is "converged", "max_iterations", "breakdown" (a
    non-positive curvature: the kernel is not PSD, or round-off dominates), "stagnated" (the CG
    recurrence met `tol` but the recomputed residual did not, after `RESTARTS` restarts: `tol` is
    below what this precision attains) or, for Cholesky, "inaccurate" (the direct solve misses
    `tol`: K + ridge·I is ill-conditioned in this precision). `iterations` counts the conjugate-
    gradient steps (block matvecs), 0 for Cholesky; `preconditioner_rank` is the rank of the
    RPCholesky factor (0 without one).
    """

    coefficients: jax.Array
    method: str
    iterations: int
    residual: float
    converged: bool
    status: str
    ridge: float
    tol: float
    preconditioner_rank: int

    def predict(self, cross_kernel) -> jax.Array:
        """K(x*, X) A for a cross kernel: a dense (M, n) array or an operator with `.matvec`."""
        n = self.coefficients.shape[0]
        shape = tuple(getattr(cross_kernel, "shape", ()))
        if len(shape) != 2 or shape[1] != n:
            raise bad_value(
                "cross_kernel",
                describe(cross_kernel),
                f"a kernel K(x*, X) of shape (M, {n}): one column per training row",
            )
        if hasattr(cross_kernel, "matvec"):
            return cross_kernel.matvec(self.coefficients)
        cross = jnp.asarray(cross_kernel)
        return jnp.matmul(cross, self.coefficients.astype(cross.dtype), precision=_HIGHEST)


class LowRank(NamedTuple):
    """K ≈ F Fᵀ from randomly pivoted Cholesky: `factor` F (n, r), the `pivots` (r,) chosen, and the
    exact `residual_trace` tr(K − F Fᵀ) (from the diagonal)."""

    factor: jax.Array
    pivots: jax.Array
    residual_trace: jax.Array


def rpcholesky(op, key: Key, rank: int = DEFAULT_RANK, block_size: int = DEFAULT_BLOCK) -> LowRank:
    """Block randomly pivoted Cholesky of a PSD operator (Chen, Epperly, Tropp & Webber 2023).

    Each of ⌈rank / block_size⌉ rounds draws `block_size` distinct pivots S with probability
    proportional to the residual diagonal d = diag(K − F Fᵀ) (Gumbel top-k), takes the block product
    G = K E_S − F F_Sᵀ, and appends G G_SS^{+1/2}, G_SS^{+1/2} the pseudo-inverse square root of the
    pivot block (eigenvalues below n·eps·max dropped, so near-duplicate pivots add no noise).
    Needs `op.diagonal()` and `op.matvec`; a dense array is wrapped by `as_operator`.
    """
    op = _as_kernel_operator(op)
    rounds, block = _rounds(rank, block_size, op.shape[0])
    return _rpcholesky_compiled(op, jnp.asarray(op.diagonal()), key, rounds, block)


def _rounds(rank, block_size, n: int) -> tuple[int, int]:
    """(rounds, pivots per round) for a factor of about min(rank, n) columns."""
    rank = min(check_positive_int("rank", rank), n)
    block = min(check_positive_int("block_size", block_size), rank)
    rounds = -(-rank // block)
    return rounds, -(-rank // rounds)


def _rpcholesky(op, diagonal, key, rounds: int, block: int) -> LowRank:
    n, dtype = op.shape[0], jnp.dtype(op.dtype)
    eps = jnp.finfo(dtype).eps

    def one_round(t, carry):
        factor, pivots, residual, key = carry
        key, sub = jax.random.split(key)
        positive = residual > 0
        logits = jnp.where(positive, jnp.log(jnp.where(positive, residual, 1)), -jnp.inf)
        picked = jax.lax.top_k(logits + jax.random.gumbel(sub, (n,), dtype), block)[1]
        columns = op.matvec(jax.nn.one_hot(picked, n, dtype=dtype).T)  # K E_S, (n, block)
        g = columns - jnp.matmul(factor, factor[picked].T, precision=_HIGHEST)
        g_ss = (g[picked] + g[picked].T) / 2
        w, v = jnp.linalg.eigh(g_ss)
        keep = w > n * eps * jnp.max(jnp.abs(w))
        root = v * jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, w, 1)), 0)
        new = jnp.matmul(g, root, precision=_HIGHEST)
        factor = jax.lax.dynamic_update_slice(factor, new, (0, t * block))
        pivots = jax.lax.dynamic_update_slice(pivots, picked.astype(jnp.int32), (t * block,))
        residual = jnp.clip(residual - jnp.sum(new * new, axis=1), 0)
        return factor, pivots, residual, key

    start = (jnp.zeros((n, rounds * block), dtype), jnp.zeros(rounds * block, jnp.int32), diagonal, key)
    factor, pivots, residual, _ = fori_loop(0, rounds, one_round, start, loops_in_python(op))
    return LowRank(factor, pivots, jnp.sum(residual))


_rpcholesky_compiled = compiled(_rpcholesky, static_argnums=(3, 4))


def _woodbury(low: LowRank, shift) -> Callable[[jax.Array], jax.Array]:
    """r ↦ (F Fᵀ + shift·I)^{-1} r = r / shift + U ((S² + shift)^{-1} − 1/shift) Uᵀ r, F = U S Vᵀ."""
    u, s, _ = jnp.linalg.svd(low.factor, full_matrices=False)
    weights = (1 / (s * s + shift) - 1 / shift)[:, None]

    def apply(r):
        # einsum rather than u.T @ r: XLA:CPU ran the transposed product 5x slower (10⁴ × 128)
        ur = jnp.einsum("nr,nk->rk", u, r, precision=_HIGHEST)
        return r / shift + jnp.einsum("nr,rk->nk", u, weights * ur, precision=_HIGHEST)

    return apply


def _cg(matvec, b, ridge, precondition, tol, max_iterations, in_python):
    """Block of independent (preconditioned) CG solves of (K + ridge I) x = b, b of shape (n, k).

    Returns (x, CG steps, max relative residual recomputed from K, any breakdown). When the
    recurrence says a column has converged but its recomputed residual has drifted above `tol`,
    CG restarts from the current x with the true residual (at most `RESTARTS` times). The loops
    step from Python where `in_python` (`loops_in_python`).
    """

    def apply(v):
        return matvec(v) + ridge * v

    norm_b = jnp.linalg.norm(b, axis=0)
    safe_b = jnp.where(norm_b > 0, norm_b, 1)

    def relative(r):
        return jnp.linalg.norm(r, axis=0) / safe_b

    def steps(x, r, broken, it):
        """CG from x with residual r until every column's recurrence meets tol, or breaks down."""
        z = precondition(r)
        active = (relative(r) > tol) & ~broken
        state = (x, r, z, jnp.sum(r * z, axis=0), active, broken, it)

        def cond(state):
            return jnp.any(state[4]) & (state[6] < max_iterations)

        def body(state):
            x, r, p, rz, active, broken, it = state
            q = apply(p)
            curvature = jnp.sum(p * q, axis=0)
            ok = active & (curvature > 0) & jnp.isfinite(curvature)
            alpha = jnp.where(ok, rz / jnp.where(ok, curvature, 1), 0)
            x = x + alpha * p
            r = r - alpha * q
            z = precondition(r)
            rz_new = jnp.sum(r * z, axis=0)
            beta = jnp.where(ok, rz_new / jnp.where(rz != 0, rz, 1), 0)
            p = jnp.where(ok, z + beta * p, p)
            rz = jnp.where(ok, rz_new, rz)
            return x, r, p, rz, ok & (relative(r) > tol), broken | (active & ~ok), it + 1

        x, _, _, _, _, broken, it = while_loop(cond, body, state, in_python)
        return x, broken, it

    def cond(state):
        _, r, broken, it, restarts = state
        unfinished = jnp.any((relative(r) > tol) & ~broken)
        return unfinished & (it < max_iterations) & (restarts <= RESTARTS)

    def body(state):
        x, r, broken, it, restarts = state
        x, broken, it = steps(x, r, broken, it)
        return x, b - apply(x), broken, it, restarts + 1

    start = (jnp.zeros_like(b), b, jnp.zeros(b.shape[1], bool), 0, 0)
    x, r, broken, iterations, _ = while_loop(cond, body, start, in_python)
    return x, iterations, jnp.max(relative(r)), jnp.any(broken)


def _solve_operator(op, diagonal, b, ridge, key, rounds, block, tol, max_iterations, preconditioned):
    matvec = op.matvec
    if preconditioned:
        low = _rpcholesky(op, diagonal, key, rounds, block)
        shift = ridge + low.residual_trace / op.shape[0]
        shift = jnp.where(shift > 0, shift, jnp.finfo(b.dtype).tiny)
        precondition = _woodbury(low, shift)
    else:
        precondition = lambda r: r
    return _cg(matvec, b, ridge, precondition, tol, max_iterations, loops_in_python(op))


_solve_operator_compiled = compiled(_solve_operator, static_argnums=(5, 6, 9))


def _as_kernel_operator(kernel):
    if not hasattr(kernel, "matvec"):
        return as_operator(kernel)
    shape = tuple(getattr(kernel, "shape", ()))
    if len(shape) != 2 or shape[0] != shape[1] or not hasattr(kernel, "diagonal"):
        raise bad_value(
            "kernel",
            describe(kernel),
            "a square (n, n) kernel operator with .shape, .dtype, .matvec and .diagonal()",
            "A cross kernel K(x*, X) goes to .predict(), not to fit().",
        )
    return kernel


def _check_targets(targets, n: int, dtype) -> jax.Array:
    if not hasattr(targets, "shape") or not hasattr(targets, "dtype"):
        targets = np.asarray(targets)
    if targets.ndim not in (1, 2) or targets.shape[0] != n:
        raise bad_value(
            "targets",
            describe(targets),
            f"shape ({n},) or ({n}, k): one row per kernel row",
            "For an NTK of N samples and C outputs (N·C rows, sample-major) pass Y.reshape(-1).",
        )
    if not np.issubdtype(targets.dtype, np.number) or np.issubdtype(targets.dtype, np.complexfloating):
        raise bad_value("targets", describe(targets), "real numeric targets")
    check_finite("targets", targets)
    return jnp.asarray(targets, dtype)


def _check_ridge(ridge) -> float:
    try:
        value = float(ridge)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise bad_value("ridge", repr(ridge), "a finite number >= 0 (the λ of K + λI)")
    return value


def _cholesky(matrix: jax.Array, targets: jax.Array, ridge: float, tol: float) -> KernelRegression:
    n = matrix.shape[0]
    check_finite("kernel", matrix)
    scale = float(jnp.max(jnp.abs(matrix)))
    asymmetry = float(jnp.max(jnp.abs(matrix - matrix.T)))
    if asymmetry > math.sqrt(jnp.finfo(matrix.dtype).eps) * scale:
        raise bad_value(
            "kernel",
            f"a matrix with max |K − Kᵀ| = {asymmetry:.3g} (max |K| = {scale:.3g})",
            "a symmetric kernel",
            "Pass K(X, X); a cross kernel K(x*, X) goes to .predict().",
        )
    coefficients, residual, ok = _cholesky_solve(matrix, targets, ridge)
    if not bool(ok):
        raise bad_value(
            "kernel",
            f"a matrix whose Cholesky factorisation of K + {ridge:g}·I failed ({n} × {n}, {matrix.dtype})",
            "a symmetric positive definite K + ridge·I",
            "The kernel is not PSD, or singular in this precision: raise `ridge`, or enable x64.",
        )
    residual = float(residual)
    converged = residual <= tol
    status = "converged" if converged else "inaccurate"
    return KernelRegression(coefficients, "cholesky", 0, residual, converged, status, ridge, tol, 0)


@jax.jit
def _cholesky_solve(matrix, targets, ridge):
    shifted = matrix + ridge * jnp.eye(matrix.shape[0], dtype=matrix.dtype)
    factor = jax.scipy.linalg.cho_factor(shifted, lower=True)
    coefficients = jax.scipy.linalg.cho_solve(factor, targets)
    b = targets[:, None] if targets.ndim == 1 else targets
    a = coefficients[:, None] if coefficients.ndim == 1 else coefficients
    norms = jnp.where(jnp.linalg.norm(b, axis=0) > 0, jnp.linalg.norm(b, axis=0), 1)
    residual = jnp.linalg.norm(jnp.matmul(shifted, a, precision=_HIGHEST) - b, axis=0) / norms
    ok = jnp.all(jnp.isfinite(factor[0])) & jnp.all(jnp.isfinite(coefficients))
    return coefficients, jnp.max(residual), ok


def fit(
    kernel,
    targets: Float[Array, " n"] | Float[Array, "n k"],
    *,
    ridge: float = 0.0,
    method: str = "auto",
    key: Key | None = None,
    tol: float | None = None,
    max_iterations: int | None = None,
    rank: int = DEFAULT_RANK,
    block_size: int = DEFAULT_BLOCK,
) -> KernelRegression:
    """Kernel ridge regression: coefficients A with (K + ridge·I) A = Y.

    Parameters
    ----------
    kernel : the n×n training kernel K(X, X): a dense array, or an operator with `.shape`, `.dtype`,
        `.matvec` and `.diagonal()` (`NTKOperator`, its `.normalized()`, `pseudo_ntk`, a
        `DenseOperator`, `ntkspec.infinite.mlp_operator`).
    targets : (n,) or (n, k); several columns are solved together. For an NTK of N samples and C
        outputs (n = N·C rows, sample-major) pass Y.reshape(-1) for (N, C) targets Y.
    ridge : λ >= 0.
    method : "cholesky" (dense; an operator is formed with `.dense()`), "pcg" (RPCholesky-
        preconditioned conjugate gradients), "cg" (unpreconditioned), or "auto": Cholesky for
        arrays, "pcg" for operators.
    key : PRNG key for the preconditioner's pivots (required by "pcg").
    tol : relative residual target ‖(K + λI)a − y‖/‖y‖ per column (CG stops there; the Cholesky
        result is checked against it); default 1e-6 in float64, 1e-3 in float32.
    max_iterations : cap on CG iterations (default 1000; in floating point CG may need more than n).
    rank, block_size : rank of the RPCholesky preconditioner and pivots drawn per round (block
        products of `block_size` columns).

    Returns a `KernelRegression`; predict with `.predict(K(x*, X))` (`cross_kernel` for an NTK,
    `ntkspec.infinite.mlp_ntk(x_test, x_train, widths)` or `mlp_operator(..., x2=...)` for K∞).
    """
    if method not in METHODS:
        raise bad_value("method", repr(method), f"one of {METHODS}")
    ridge = _check_ridge(ridge)
    is_operator = hasattr(kernel, "matvec")
    if method == "auto":
        method = "pcg" if is_operator else "cholesky"
    if method == "cholesky":
        matrix = jnp.asarray(kernel.dense()) if is_operator else jnp.asarray(kernel)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise bad_value("kernel", describe(matrix), "a square (n, n) kernel")
        if not jnp.issubdtype(matrix.dtype, jnp.floating):
            raise bad_value("kernel", describe(matrix), "a floating-point kernel", "Cast it to float.")
        tol = _tolerance(tol, matrix.dtype)
        return _cholesky(matrix, _check_targets(targets, matrix.shape[0], matrix.dtype), ridge, tol)
    op = _as_kernel_operator(kernel)
    n, dtype = op.shape[0], jnp.dtype(op.dtype)
    tol = _tolerance(tol, dtype)
    b = _check_targets(targets, n, dtype)
    max_iterations = check_positive_int(
        "max_iterations", DEFAULT_MAX_ITERATIONS if max_iterations is None else max_iterations
    )
    preconditioned = method == "pcg"
    if preconditioned and key is None:
        raise bad_value(
            "key", None, "a PRNG key for the preconditioner's random pivots", "Pass key=jax.random.key(0)."
        )
    diagonal = op.diagonal()
    check_finite("kernel diagonal", diagonal)
    if bool(jnp.any(diagonal < 0)):
        raise bad_value(
            "kernel",
            f"an operator with {int(jnp.sum(diagonal < 0))} negative diagonal entries",
            "a PSD kernel",
        )
    rounds, block = _rounds(rank, block_size, n)
    matrix = b[:, None] if b.ndim == 1 else b
    x, iterations, residual, broken = _solve_operator_compiled(
        op, diagonal, matrix, ridge, key, rounds, block, tol, max_iterations, preconditioned
    )
    residual, broken, iterations = float(residual), bool(broken), int(iterations)
    converged = residual <= tol
    if converged:
        status = "converged"
    elif broken:
        status = "breakdown"
    else:
        status = "max_iterations" if iterations >= max_iterations else "stagnated"
    return KernelRegression(
        x[:, 0] if b.ndim == 1 else x,
        method,
        iterations,
        residual,
        converged,
        status,
        ridge,
        tol,
        rounds * block if preconditioned else 0,
    )


def _tolerance(tol, dtype) -> float:
    if tol is None:
        return DEFAULT_TOL[jnp.dtype(dtype).itemsize]
    value = float(tol)
    if not 0 < value < 1:
        raise bad_value("tol", repr(tol), "a relative residual in (0, 1)")
    return value


@dataclasses.dataclass(frozen=True)
class _PseudoApply:
    """`apply` with its C outputs summed and divided by √C: the one output of the pseudo-NTK."""

    apply: Callable
    n_outputs: int

    def __call__(self, params, state, x):
        return jnp.sum(self.apply(params, state, x), axis=1, keepdims=True) / math.sqrt(self.n_outputs)


def pseudo_ntk(model, *args, **options) -> NTKOperator:
    """The pseudo-NTK of a model: the N×N NTK of g(x) = Σ_c f_c(x) / √C (Mohamadi, Bae & Sutherland
    2023), i.e. (1/C) Σ_{c,c'} ∇f_c ∇f_c'ᵀ. Arguments as `ntkspec.ntk`; an `NTKOperator` with one
    output (dense, matvec, diagonal, normalized and the structured Dense path all apply).
    Regress (N, C) targets on it directly: `fit(pseudo_ntk(model, x), Y, key=...)`.
    """
    op = ntk(model, *args, **options)
    return dataclasses.replace(op, apply=_PseudoApply(op.apply, op.n_outputs), n_outputs=1)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CrossKernel:
    """K(x*, X) = J(x*) J(X)ᵀ, shape (M·C, N·C), rows and columns sample-major; build it with
    `cross_kernel`. Only `.matvec` (and `.shape`, `.dtype`): it is for predictions. A pytree."""

    train: NTKOperator
    test: NTKOperator

    @property
    def shape(self) -> tuple[int, int]:
        return (self.test.shape[0], self.train.shape[0])

    @property
    def dtype(self) -> jnp.dtype:
        return self.train.dtype

    def matvec(self, v: jax.Array) -> jax.Array:
        """K(x*, X) v for v of shape (N·C,) or (N·C, k)."""
        n = self.shape[1]
        if not hasattr(v, "shape") or v.ndim not in (1, 2) or v.shape[0] != n:
            raise bad_value("v", describe(v), f"shape ({n},) or ({n}, k), n = N·C training rows")
        block = v[:, None] if v.ndim == 1 else v
        out = _cross_matmat(self, jnp.asarray(block, self.dtype))
        return out[:, 0] if v.ndim == 1 else out


def cross_kernel(op: NTKOperator, x_test: Float[Array, " M *features"]) -> CrossKernel:
    """The cross kernel K(x*, X) of an `NTKOperator` (raw, cosine or pseudo) and test inputs.

    K(x*, X) V = J(x*) (J(X)ᵀ V): one reverse pass over the training chunks, one forward pass over
    the test samples (in chunks of `op.chunk_size`), per block of `op.probe_block` columns; no
    kernel is formed. For the cosine
    kernel both sides are scaled, D*^{-1/2} J(x*) J(X)ᵀ D^{-1/2}, with D* = diag K(x*, x*) exact.
    """
    if not isinstance(op, NTKOperator):
        raise bad_value(
            "op",
            describe(op),
            "an NTKOperator (from ntkspec.ntk or pseudo_ntk)",
            "For K∞ use ntkspec.infinite.mlp_operator(x_test, widths, C, x2=x_train).",
        )
    validate(op.apply, op.params, op.state, x_test)
    test = dataclasses.replace(op, x=jnp.asarray(x_test, op.x.dtype), scale=None)
    if op.scale is not None:
        test = dataclasses.replace(test, scale=cosine_scale(test.diagonal()))
    return CrossKernel(op, test)


@jax.jit
def _cross_matmat(cross: CrossKernel, block: jax.Array) -> jax.Array:
    train, test = cross.train, cross.test
    if train.scale is not None:
        block = train.scale[:, None] * block

    def model(params, x):
        return train.apply(params, train.state, x)

    def column(v):  # one column: J(x*) J(X)ᵀ v
        xs, vs = _chunks(train, (train.x, v.reshape(train.n_samples, train.n_outputs)))

        def pull(total, chunk):
            x, v = chunk
            _, vjp = jax.vjp(lambda p: model(p, x), train.params)
            return jax.tree.map(jnp.add, total, vjp(v)[0]), None

        u, _ = jax.lax.scan(pull, jax.tree.map(jnp.zeros_like, train.params), (xs, vs))

        def push(x):
            return jax.jvp(lambda p: model(p, x[None]), (train.params,), (u,))[1][0]

        return jax.lax.map(push, test.x, batch_size=test.chunk_size).reshape(-1)

    out = jax.lax.map(column, block.T, batch_size=train.probe_block).T
    return out if test.scale is None else test.scale[:, None] * out
