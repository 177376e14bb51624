"""Kernel-target alignment and eigenvector rotation between kernels.

Kernel-target alignment (Cristianini, Shawe-Taylor, Elisseeff & Kandola, "On kernel-target
alignment", NeurIPS 2001) of a kernel K with targets Y (n, t):

    A(K, YYᵀ) = ⟨K, YYᵀ⟩_F / (‖K‖_F ‖YYᵀ‖_F) = tr(YᵀKY) / (‖K‖_F ‖YᵀY‖_F).

NTK layout. The empirical NTK of N samples and C outputs has n = N·C sample-major rows, row i·C + c.
`one_hot_targets(labels, C)` returns the flattened one-hot vector y with y[i·C + c] = [labels_i = c]
(optionally centred by subtracting 1/C), so the target kernel is the rank-one (N·C)×(N·C)
matrix yyᵀ:
K's (i, c), (j, c′) entry is paired with [c = labels_i][c′ = labels_j], the function-space target of
the network's outputs. Then ⟨K, yyᵀ⟩ = yᵀKy (one matvec, exact) and ‖yyᵀ‖_F = ‖y‖², and only ‖K‖_F²
needs estimating when K is matrix-free.

Kernel alignment between two kernels (the same paper; 1 − A is the "kernel distance" used to track
how far the NTK moves in training, Fort et al., "Deep learning versus kernel learning", NeurIPS 2020):

    A(K₁, K₂) = ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F).

Matrix-free, all three inner products come from one Hutch++-style pass (Meyer, Musco, Musco &
Woodruff, "Hutch++", SOSA 2021) with shared randomness: Q = orth([K₁S, K₂S]) captures both kernels'
top spaces and gives ⟨K₁Q, K₂Q⟩ exactly; probes g ← (I − QQᵀ)g, shared by the two kernels, estimate
the rest as the mean of (K₁g)ᵀ(K₂g), ‖K₁g‖², ‖K₂g‖². The error bar is the delta method on the
probes' 3 × 3 sample covariance.

Relative distance between two kernels, ‖K₁ − K₂‖_F / ‖K₂‖_F (e.g. of the empirical NTK from its
infinite-width limit K∞, which it approaches as O(n^-1/2) in the width n; Hanin & Nica 2019). The
same pass gives it: ‖K₁ − K₂‖_F² = ‖K₁‖_F² − 2⟨K₁, K₂⟩_F + ‖K₂‖_F², here estimated per probe as
‖(K₁ − K₂)g‖² (and ‖(K₁ − K₂)Q‖_F² exactly), which has no cancellation when K₁ ≈ K₂; the error bar is
the delta method on the probes' 2 × 2 covariance of ‖(K₁ − K₂)g‖² and ‖K₂g‖².

Rotation. Principal angles between the top-r eigenvector subspaces of two kernels (Björck & Golub
1973): cos θᵢ are the singular values of U₁ᵀU₂ for orthonormal bases U₁, U₂ (dense `eigh` or the
Lanczos eigenvectors of `top_eigenpairs` / `krylov_spectrum`), with r the effective rank of the
first kernel rounded when not given. A top-r subspace is unique only where λ_r > λ_{r+1}; NTKs have
exactly equal eigenvalues (a network whose last hidden layer is narrower than its C outputs: the
output directions that layer cannot reach see only the last layer's kernel, the same in each), so an
r inside such a multiplet is moved to its end (`subspace_rank`), and the subspaces compared may then
differ in dimension by a few.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ntkspec._errors import bad_value, describe
from ntkspec.estimators._common import (
    as_block_matvec,
    check_positive_int,
    entropy_from_eigenvalues,
    projected_dtype,
    sample_std,
)


class AlignmentEstimate(NamedTuple):
    """Alignment `value` in [−1, 1], its standard error `stderr` (0 if exact), `matvecs` used."""

    value: jax.Array
    stderr: jax.Array
    matvecs: int


class FrobeniusEstimate(NamedTuple):
    """Estimate of ‖K‖_F² with its standard error and the matvecs used."""

    value: jax.Array
    stderr: jax.Array
    matvecs: int


class DistanceEstimate(NamedTuple):
    """Relative distance `value` = ‖K₁ − K₂‖_F / ‖K₂‖_F >= 0, its standard error (0 if exact),
    `matvecs` used per kernel."""

    value: jax.Array
    stderr: jax.Array
    matvecs: int


class Rotation(NamedTuple):
    """Principal angles (r,) in radians, ascending, between a p- and a q-dimensional subspace,
    r = min(p, q); `overlap` = Σ cos²θᵢ / r = ‖U₁ᵀU₂‖_F² / r (1: the smaller subspace lies in the
    other, about max(p, q)/n: unrelated)."""

    angles: jax.Array
    overlap: jax.Array
    rank: int


def one_hot_targets(labels, num_classes: int, *, center: bool = False) -> jax.Array:
    """Sample-major one-hot targets y (N·C,): y[i·C + c] = [labels_i = c], minus 1/C if `center`."""
    c = check_positive_int("num_classes", num_classes, 2)
    y = jax.nn.one_hot(jnp.asarray(labels), c)
    if center:
        y = y - 1.0 / c
    return y.reshape(-1)


def kernel_target_alignment(kernel, targets) -> AlignmentEstimate:
    """Exact alignment of a dense kernel (n, n) with targets (n,) or (n, t)."""
    kernel = jnp.asarray(kernel)
    y = _targets(targets, kernel.shape[0], kernel.dtype)
    acc = projected_dtype()
    kernel = kernel.astype(acc)
    y = y.astype(acc)
    inner = jnp.sum(y * (kernel @ y))
    value = inner / (jnp.linalg.norm(kernel) * jnp.linalg.norm(y.T @ y))
    return AlignmentEstimate(value, jnp.zeros((), acc), 0)


def frobenius_norm_squared(op, key, *, num_matvecs: int, n=None, dtype=None) -> FrobeniusEstimate:
    """Hutch++-style ‖K‖_F² = tr(K²) with one matvec per quadratic form (Meyer et al. 2021).

    With k = m // 3: Q = orth(KS), ‖K‖_F² = ‖KQ‖_F² + tr((I − QQᵀ)K²(I − QQᵀ)), the second term by
    m − 2k Rademacher probes g ← (I − QQᵀ)g as the mean of ‖Kg‖², with its SEM.
    """
    matvec, n, dtype = as_block_matvec(op, n, dtype)
    m = check_positive_int("num_matvecs", num_matvecs, 4)
    acc = projected_dtype()
    k = m // 3
    key_s, key_g = jax.random.split(key)
    q, _ = jnp.linalg.qr(matvec(jax.random.rademacher(key_s, (n, k), dtype)))
    low_rank = jnp.sum(matvec(q).astype(acc) ** 2)
    g = jax.random.rademacher(key_g, (n, m - 2 * k), dtype)
    g = g - q @ (q.T @ g)
    forms = jnp.sum(matvec(g).astype(acc) ** 2, axis=0)
    return FrobeniusEstimate(low_rank + jnp.mean(forms), sample_std(forms) / jnp.sqrt(m - 2 * k), m)


def kernel_target_alignment_stochastic(
    op, targets, key, *, num_matvecs: int, n=None, dtype=None
) -> AlignmentEstimate:
    """Matrix-free alignment: tr(YᵀKY) exactly (t matvecs), ‖K‖_F² by `frobenius_norm_squared`.

    The standard error follows by the delta method: stderr(A) = A · stderr(‖K‖_F²) / (2‖K‖_F²).
    """
    matvec, n, dtype = as_block_matvec(op, n, dtype)
    y = _targets(targets, n, dtype)
    acc = projected_dtype()
    inner = jnp.sum(y.astype(acc) * matvec(y).astype(acc))
    frob = frobenius_norm_squared(matvec, key, num_matvecs=num_matvecs, n=n, dtype=dtype)
    yy = jnp.linalg.norm(y.T.astype(acc) @ y.astype(acc))
    value = inner / (jnp.sqrt(frob.value) * yy)
    stderr = jnp.abs(value) * frob.stderr / (2 * frob.value)
    return AlignmentEstimate(value, stderr, frob.matvecs + y.shape[1])


def kernel_alignment(kernel1, kernel2) -> AlignmentEstimate:
    """Exact alignment A(K₁, K₂) = ⟨K₁, K₂⟩_F / (‖K₁‖_F ‖K₂‖_F) of two dense kernels (n, n)."""
    k1, k2 = _same_square(kernel1, kernel2)
    acc = projected_dtype()
    k1, k2 = k1.astype(acc), k2.astype(acc)
    value = jnp.sum(k1 * k2) / (jnp.linalg.norm(k1) * jnp.linalg.norm(k2))
    return AlignmentEstimate(value, jnp.zeros((), acc), 0)


def kernel_distance(kernel1, kernel2) -> DistanceEstimate:
    """Exact relative distance ‖K₁ − K₂‖_F / ‖K₂‖_F of two dense kernels (n, n)."""
    k1, k2 = _same_square(kernel1, kernel2)
    acc = projected_dtype()
    k1, k2 = k1.astype(acc), k2.astype(acc)
    return DistanceEstimate(jnp.linalg.norm(k1 - k2) / jnp.linalg.norm(k2), jnp.zeros((), acc), 0)


def kernel_alignment_stochastic(op1, op2, key, *, num_matvecs: int, n=None, dtype=None) -> AlignmentEstimate:
    """Matrix-free A(K₁, K₂) from `num_matvecs` products with each kernel (see the module notes).

    With s = m // 4: sketches K₁S, K₂S (s each), Q = orth of both (2s columns), K₁Q and K₂Q (2s each),
    and m − 3s shared deflated probes for the three residual traces.
    """
    return kernel_comparison_stochastic(op1, op2, key, num_matvecs=num_matvecs, n=n, dtype=dtype)[0]


def kernel_comparison_stochastic(
    op1, op2, key, *, num_matvecs: int, n=None, dtype=None
) -> tuple[AlignmentEstimate, DistanceEstimate]:
    """A(K₁, K₂) and ‖K₁ − K₂‖_F / ‖K₂‖_F from one matrix-free pass of `num_matvecs` products with
    each kernel (the pass of `kernel_alignment_stochastic`; see the module notes)."""
    matvec1, n, dtype = as_block_matvec(op1, n, dtype)
    matvec2, n2, dtype2 = as_block_matvec(op2, n, dtype)
    if (n2, dtype2) != (n, dtype):
        raise bad_value("op2", f"{n2} rows of {dtype2}", f"{n} rows of {dtype}, as op1")
    m = check_positive_int("num_matvecs", num_matvecs, 8)
    acc = projected_dtype()
    s = m // 4
    key_s, key_g = jax.random.split(key)
    sketch = jax.random.rademacher(key_s, (n, s), dtype)
    q, _ = jnp.linalg.qr(jnp.concatenate([matvec1(sketch), matvec2(sketch)], axis=1))

    def products(v):  # per column: ⟨K₁v, K₂v⟩, ‖K₁v‖², ‖K₂v‖², ‖(K₁ − K₂)v‖²
        a, b = matvec1(v).astype(acc), matvec2(v).astype(acc)
        return jnp.stack([jnp.sum(a * b, 0), jnp.sum(a * a, 0), jnp.sum(b * b, 0), jnp.sum((a - b) ** 2, 0)])

    low_rank = jnp.sum(products(q), axis=1)
    p = m - 3 * s
    g = jax.random.rademacher(key_g, (n, p), dtype)
    forms = products(g - q @ (q.T @ g))
    inner, norm1, norm2, gap = low_rank + jnp.mean(forms, axis=1)
    centred = forms - jnp.mean(forms, axis=1, keepdims=True)
    # Delta method; the variances need >= 2 probes (with fewer, `sample_std` says +inf).
    scale = 1 / jnp.sqrt(norm1 * norm2)
    value = inner * scale
    grad = jnp.stack([scale, -value / (2 * norm1), -value / (2 * norm2)])
    alignment = AlignmentEstimate(value, sample_std(grad @ centred[:3]) / jnp.sqrt(p), m)
    distance = jnp.sqrt(gap / norm2)
    grad = jnp.stack([distance / (2 * gap), -distance / (2 * norm2)])
    spread = sample_std(grad @ centred[jnp.array([3, 2])])
    return alignment, DistanceEstimate(distance, spread / jnp.sqrt(p), m)


#: Eigenvalues closer than this times the largest count as equal in `subspace_rank` (float32
#: round-off splits an exact multiplet of an NTK by about 1e-7 of its largest eigenvalue).
DEGENERATE_RTOL = 1e-6


def subspace_rank(eigenvalues, r: int, rtol: float = DEGENERATE_RTOL) -> int:
    """The smallest r′ ≥ r whose top-r′ eigenvector subspace is unique: λ_r′ − λ_r′₊₁ > rtol · λ₁
    (eigenvalues descending, 1-based), or r′ = len(eigenvalues) (none known past it).

    An r that cuts a multiplet of equal eigenvalues moves to the multiplet's end, so the subspace
    does not depend on which basis of the multiplet `eigh` or Lanczos returned. Host function.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    r = min(check_positive_int("r", r), lam.size)
    tol = rtol * abs(lam[0])
    while r < lam.size and lam[r - 1] - lam[r] <= tol:
        r += 1
    return r


def principal_angles(u1, u2) -> Rotation:
    """Principal angles between span(u1) and span(u2), (n, p) and (n, q) with orthonormal columns:
    min(p, q) of them."""
    u1, u2 = jnp.asarray(u1), jnp.asarray(u2)
    if u1.ndim != 2 or u2.ndim != 2 or u1.shape[0] != u2.shape[0]:
        raise bad_value("u2", describe(u2), f"orthonormal columns with {u1.shape[0]} rows, as u1 {u1.shape}")
    acc = projected_dtype()
    cosines = jnp.linalg.svd(u1.T.astype(acc) @ u2.astype(acc), compute_uv=False)
    cosines = jnp.clip(cosines, 0.0, 1.0)
    return Rotation(jnp.arccos(cosines), jnp.mean(cosines**2), min(u1.shape[1], u2.shape[1]))


def eigenvector_rotation(kernel1, kernel2, *, rank: int | None = None) -> Rotation:
    """Principal angles between the top eigenvector subspaces of two dense kernels (exact `eigh`):
    kernel1's top r₁ = `subspace_rank`(λ(kernel1), r) and kernel2's top `subspace_rank`(λ(kernel2), r₁),
    r = `rank`, by default the effective rank exp H of `kernel1` rounded. Host function.
    """
    k1, k2 = _same_square(kernel1, kernel2)
    lam1, vec1 = jnp.linalg.eigh(k1)
    lam2, vec2 = jnp.linalg.eigh(k2)
    if rank is None:
        entropy = entropy_from_eigenvalues(lam1.astype(projected_dtype()))
        rank = max(1, round(float(jnp.exp(entropy))))
    r1 = subspace_rank(lam1[::-1], check_positive_int("rank", rank))
    r2 = subspace_rank(lam2[::-1], r1)
    return principal_angles(vec1[:, ::-1][:, :r1], vec2[:, ::-1][:, :r2])


def _same_square(kernel1, kernel2) -> tuple[jax.Array, jax.Array]:
    k1, k2 = jnp.asarray(kernel1), jnp.asarray(kernel2)
    if k1.ndim != 2 or k1.shape[0] != k1.shape[1]:
        raise bad_value("kernel1", describe(kernel1), "a square kernel (n, n)")
    if k1.shape != k2.shape:
        expected = f"a square kernel of the same shape as kernel1, {k1.shape}"
        raise bad_value("kernel2", describe(kernel2), expected)
    return k1, k2


def _targets(targets, n: int, dtype) -> jax.Array:
    y = jnp.asarray(targets)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise bad_value(
            "targets",
            describe(targets),
            f"a vector ({n},) or matrix ({n}, t)",
            "For an NTK use one_hot_targets(labels, C), which flattens sample-major.",
        )
    return y.astype(dtype)
