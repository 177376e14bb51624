"""tr(K ln K), spectral entropy and effective rank by Lanczos quadrature; top-k Ritz pairs for free.

With T = tr K and S = tr(K ln K) = tr f(K), f(x) = x ln x, the spectral entropy and effective rank
(Roy & Vetterli 2007) are H = ln T − S/T and erank = exp H.

Quadrature. For a unit start block, the Lanczos tridiagonal T_s gives the Gauss rule
e₁ᵀ f(T_s) e₁ ≈ vᵀ f(K) v (Golub & Meurant, "Matrices, moments and quadrature", 1994/2010). x ln x
is operator convex with f(0) = 0, so the Gauss value is a *lower* bound for every column (Jensen's
operator inequality, Hansen & Pedersen 2003); all odd derivatives of order ≥ 3 are negative, so the
Gauss–Radau rule with a node prescribed at 0 is an *upper* bound (b = 1; for blocks it is the
analogous block rule with 0 a b-fold node, bracketing in all our tests). Their gap is reported as a
bias bound. Ritz values are clipped at 0 so that round-off never gives NaN (x ln x → 0).

Estimators.
- `slq`: stochastic Lanczos quadrature (Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via
  stochastic Lanczos quadrature", SIMAX 2017): m Rademacher probes, s Lanczos steps each.
- `krylov_spectrum`: the Krylov-aware estimator (Chen & Hallman, "Krylov-aware stochastic trace
  estimation", SIMAX 2023). Block Lanczos from Gaussian Ω (n, b) for q + r blocks; with Q̄ its first
  b·q columns, tr(Q̄ᵀ f(K) Q̄) is read off the top-left b·q block of f(T_{q+r}), and independent
  Hutchinson–Lanczos probes zᵢ ← (I − Q̄Q̄ᵀ)zᵢ estimate the rest, tr((I − Q̄Q̄ᵀ) f(K) (I − Q̄Q̄ᵀ)).
  When the exact trace T is known (for an NTK, diag K is exact and cheap), the residual quadratic
  forms tᵢ = zᵢᵀKzᵢ, whose mean must equal T − T₀ (T₀ = tr Q̄ᵀKQ̄), serve as a control variate:
  Ŝ = S₀ + mean(sᵢ) − β̂(mean(tᵢ) − (T − T₀)), β̂ the sample regression slope of sᵢ on tᵢ, with
  standard error std(sᵢ − β̂tᵢ)/√m. Ŝ uses the midpoint of the Gauss and Gauss–Radau values and
  reports half their gap as the bias bound. The same block Krylov space gives the top-k Ritz pairs
  with residuals and a Hutch++-type trace check T₀ + mean(tᵢ): no matvec is paid twice.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ntkspec._errors import bad_value
from ntkspec.estimators._common import (
    as_block_matvec,
    check_positive_int,
    entropy_from_traces,
    projected_dtype,
    sample_std,
    xlogx,
)
from ntkspec.estimators.eigs import ritz_pairs
from ntkspec.estimators.lanczos import block_lanczos


class QuadratureEstimate(NamedTuple):
    """Estimate of tr(K ln K) by SLQ.

    value, stderr : Gauss-rule estimate and its standard error of the mean.
    upper : the same probes with the Gauss–Radau rule (node at 0); [value, upper] brackets the
        quadrature bias of the probe mean.
    trace, trace_stderr : Hutchinson estimate of tr K from the same probes (no extra matvecs).
    matvecs : matvecs used.
    """

    value: jax.Array
    stderr: jax.Array
    upper: jax.Array
    trace: jax.Array
    trace_stderr: jax.Array
    matvecs: int


class KrylovSpectrum(NamedTuple):
    """Result of `krylov_spectrum` (scalars in the projected dtype).

    trace, trace_stderr : the exact trace if one was given (stderr 0), else the trace check below.
    trace_check, trace_check_stderr : T₀ + mean(zᵢᵀKzᵢ), a Hutch++-type estimate of tr K.
    xlogx_trace, xlogx_trace_stderr : Ŝ ≈ tr(K ln K) and its standard error.
    entropy, entropy_stderr : H = ln T − Ŝ/T and its standard error (residual-probe SE).
    entropy_bias_bound : (Ŝ_Radau − Ŝ_Gauss)/(2T) ≥ 0, a bound on the quadrature bias of `entropy`:
        Ŝ is the midpoint of the Gauss (lower) and Gauss–Radau (upper) values, which halves the
        worst-case bias of the Gauss value (measured: it also lowered the typical bias).
    effective_rank, effective_rank_stderr : exp H and erank · stderr(H).
    eigenvalues, eigenvalue_residuals, eigenvectors : top-k Ritz pairs of the block Krylov space,
        descending, with ‖Kv − θv‖.
    matvecs : matvecs used in all.
    """

    trace: jax.Array
    trace_stderr: jax.Array
    trace_check: jax.Array
    trace_check_stderr: jax.Array
    xlogx_trace: jax.Array
    xlogx_trace_stderr: jax.Array
    entropy: jax.Array
    entropy_stderr: jax.Array
    entropy_bias_bound: jax.Array
    effective_rank: jax.Array
    effective_rank_stderr: jax.Array
    eigenvalues: jax.Array
    eigenvalue_residuals: jax.Array
    eigenvectors: jax.Array
    matvecs: int


def slq(op, key, *, num_probes: int, num_steps: int, n=None, dtype=None) -> QuadratureEstimate:
    """Stochastic Lanczos quadrature for tr(K ln K): m Rademacher probes × s Lanczos steps."""
    _, n, dtype = as_block_matvec(op, n, dtype)
    m = check_positive_int("num_probes", num_probes, 2)
    s = check_positive_int("num_steps", num_steps)
    z = jax.random.rademacher(key, (n, m), dtype)
    gauss, radau, forms = _probe_quadrature(op, z, s, n, dtype)
    root_m = jnp.sqrt(m)
    return QuadratureEstimate(
        value=jnp.mean(gauss),
        stderr=sample_std(gauss) / root_m,
        upper=jnp.mean(radau),
        trace=jnp.mean(forms),
        trace_stderr=sample_std(forms) / root_m,
        matvecs=m * s,
    )


def krylov_spectrum(
    op,
    key,
    *,
    trace=None,
    budget: int = 400,
    top_k: int = 10,
    block_size: int = 10,
    krylov_fraction: float = 0.5,
    extra_blocks: int = 4,
    probe_steps: int = 10,
    n=None,
    dtype=None,
) -> KrylovSpectrum:
    """Entropy, effective rank, top-k eigenpairs and a trace check from one Krylov-aware run.

    Parameters
    ----------
    op : square array, operator with `.matvec`, or block-matvec callable (then `n=`, `dtype=`).
    key : PRNG key (block start Ω and residual probes).
    trace : the exact tr K, if known (enables the control variate; strongly recommended).
    budget : matvecs B. `krylov_fraction`·B go to q + r blocks of size b = `block_size`, the last
        r = min(`extra_blocks`, (q + r)//2) only sharpening the quadrature of the first q; the rest
        to m = ⌊(1 − fraction)·B / s⌋ residual probes of s = `probe_steps` Lanczos steps.
        Defaults (b = 10, half of B, r = 4, s = 10, so m = B/20) are those measured in the notes.
    top_k : number of Ritz pairs returned.
    """
    _, n, dtype = as_block_matvec(op, n, dtype)
    budget = check_positive_int("budget", budget, 1)
    b = check_positive_int("block_size", block_size)
    s = check_positive_int("probe_steps", probe_steps)
    top_k = check_positive_int("top_k", top_k)
    r_max = check_positive_int("extra_blocks", extra_blocks, 0)
    if not 0.0 < krylov_fraction < 1.0:
        raise bad_value("krylov_fraction", krylov_fraction, "a fraction strictly between 0 and 1")
    blocks = min(max(2, round(krylov_fraction * budget / b)), n // b - 1)
    r = min(r_max, blocks // 2)
    q = blocks - r
    m = (budget - blocks * b) // s
    # The control variate fits an intercept and a slope to the probes: its error bar needs m >= 3.
    m_min = 2 if trace is None else 3
    if m < m_min or s + 1 > n or top_k > blocks * b:
        raise bad_value(
            "budget",
            budget,
            f"room for >= {m_min} residual probes of {s} steps after {blocks} blocks of {b} "
            f"and top_k = {top_k} <= {blocks * b} Krylov columns",
            "Raise the budget, or lower block_size / probe_steps / top_k.",
        )
    proj = projected_dtype()
    key_block, key_probe = jax.random.split(key)

    omega = jax.random.normal(key_block, (n, b), dtype)
    decomposition = block_lanczos(op, omega, num_steps=blocks, n=n, dtype=dtype)
    c = q * b
    s0_gauss, s0_radau = _gauss_radau(decomposition.tridiagonal, decomposition.next_coupling, c, dtype)
    t0 = jnp.trace(decomposition.tridiagonal[:c, :c])
    qbar = decomposition.basis[:, :c]
    z = jax.random.rademacher(key_probe, (n, m), dtype)
    z = z - qbar @ (qbar.T @ z)
    z = z - qbar @ (qbar.T @ z)
    gauss, radau, forms = _probe_quadrature(op, z, s, n, dtype)

    root_m = jnp.sqrt(m)
    trace_check = t0 + jnp.mean(forms)
    trace_check_stderr = sample_std(forms) / root_m
    if trace is None:
        total = trace_check
        total_stderr = trace_check_stderr
        lower = s0_gauss + jnp.mean(gauss)
        upper = s0_radau + jnp.mean(radau)
        xlogx_trace = (lower + upper) / 2
        # Delta method for H(S, T) = ln T − S/T with the probes' sample covariance.
        cov = jnp.cov(jnp.stack([gauss, forms])) / m
        grad = jnp.stack([-1.0 / total, 1.0 / total + xlogx_trace / total**2])
        xlogx_stderr = jnp.sqrt(cov[0, 0])
        entropy_stderr = jnp.sqrt(jnp.clip(grad @ cov @ grad, 0.0))
    else:
        total = jnp.asarray(trace, proj)
        total_stderr = jnp.zeros((), proj)
        centred = forms - jnp.mean(forms)
        var_t = jnp.sum(centred**2)
        slope = jnp.where(var_t > 0, jnp.sum(centred * gauss) / jnp.where(var_t > 0, var_t, 1), 0)
        correction = slope * (jnp.mean(forms) - (total - t0))
        lower = s0_gauss + jnp.mean(gauss) - correction
        upper = s0_radau + jnp.mean(radau) - correction
        xlogx_trace = (lower + upper) / 2
        # ddof = 2: intercept and slope were both fitted to the m probes.
        xlogx_stderr = sample_std(gauss - slope * forms, ddof=2) / root_m
        entropy_stderr = xlogx_stderr / total
    entropy = entropy_from_traces(xlogx_trace, total)
    effective_rank = jnp.exp(entropy)
    ritz = ritz_pairs(decomposition, top_k)
    return KrylovSpectrum(
        trace=total,
        trace_stderr=total_stderr,
        trace_check=trace_check,
        trace_check_stderr=trace_check_stderr,
        xlogx_trace=xlogx_trace,
        xlogx_trace_stderr=xlogx_stderr,
        entropy=entropy,
        entropy_stderr=entropy_stderr,
        entropy_bias_bound=jnp.clip(upper - lower, 0.0) / (2 * total),
        effective_rank=effective_rank,
        effective_rank_stderr=effective_rank * entropy_stderr,
        eigenvalues=ritz.values,
        eigenvalue_residuals=ritz.residuals,
        eigenvectors=ritz.vectors,
        matvecs=blocks * b + m * s,
    )


def _probe_quadrature(op, z, num_steps, n, dtype):
    """Per column v of z: Gauss and Gauss–Radau values of vᵀ f(K) v, and vᵀKv (‖v‖²-scaled)."""
    proj = projected_dtype()

    def one(v):
        decomposition = block_lanczos(op, v[:, None], num_steps=num_steps, n=n, dtype=dtype)
        t = decomposition.tridiagonal
        gauss, radau = _gauss_radau(t, decomposition.next_coupling, 1, dtype)
        return gauss, radau, t[0, 0]

    gauss, radau, first = jax.vmap(one, in_axes=1)(z)
    norms = jnp.sum(z.astype(proj) ** 2, axis=0)
    return norms * gauss, norms * radau, norms * first


def _gauss_radau(t, coupling, cols, dtype):
    """Σ over the first `cols` unit vectors eᵢ of eᵢᵀ f(T) eᵢ (Gauss) and of the Radau extension.

    The Radau matrix appends one block with diagonal Ω̃ = B [T⁻¹]_{ss} Bᵀ (B the next coupling),
    which makes 0 an eigenvalue of multiplicity b (Golub & Meurant 2010, §6.2 and the block
    form). Ritz values below the working dtype's resolution (eps·θ_max·dim) are floored there in
    T⁻¹: they are round-off, and dividing by them would only loosen the bracket.
    """
    theta, u = jnp.linalg.eigh(t)
    gauss = jnp.sum(u[:cols] ** 2 * xlogx(theta))
    b = coupling.shape[0]
    floor = jnp.finfo(dtype).eps * t.shape[0] * jnp.max(jnp.abs(theta))
    floor = jnp.where(floor > 0, floor, jnp.finfo(t.dtype).tiny)
    inverse = 1.0 / jnp.clip(theta, floor)
    t_inv_last = (u[-b:] * inverse) @ u[-b:].T
    extra = coupling @ t_inv_last @ coupling.T
    k = t.shape[0]
    ext = jnp.zeros((k + b, k + b), t.dtype).at[:k, :k].set(t)
    ext = ext.at[k:, k - b : k].set(coupling).at[k - b : k, k:].set(coupling.T)
    ext = ext.at[k:, k:].set((extra + extra.T) / 2)
    theta_r, u_r = jnp.linalg.eigh(ext)
    radau = jnp.sum(u_r[:cols] ** 2 * xlogx(theta_r))
    return gauss, radau
