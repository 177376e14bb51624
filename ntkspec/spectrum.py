"""One entry point for the spectrum of a kernel: `spectrum(op, method=...)` returns a `Spectrum` record.

Spectral entropy (von Neumann entropy of the trace-normalised kernel) and effective rank
(Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007):

    p_i = lambda_i / tr K,    H = -sum_i p_i ln p_i,    erank = exp(H).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import entr

from ntkspec._errors import bad_value

METHODS = ("exact",)


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Spectral summary of one symmetric PSD kernel (host values, ready to store).

    Standard errors are 0 for exact results. `eigenvalues` are descending: all of them for the exact
    method, the top ones otherwise, with `eigenvalue_residuals` ||K v - theta v|| beside them.
    `min_raw_eigenvalue` is the most negative eigenvalue before clipping to 0 (round-off; reported,
    not hidden); NaN where no full eigendecomposition was made.
    """

    size: int
    trace: float
    trace_stderr: float
    entropy: float
    entropy_stderr: float
    effective_rank: float
    effective_rank_stderr: float
    eigenvalues: np.ndarray
    eigenvalue_residuals: np.ndarray
    min_raw_eigenvalue: float
    method: str
    reason: str
    matvecs: int
    seconds: float
    entropy_bias_bound: float = 0.0

    @property
    def mean_diagonal(self) -> float:
        """tr K / n, the normalisation other NTK tools report as "the trace"."""
        return self.trace / self.size


def entropy_from_eigenvalues(eigenvalues: jax.Array) -> jax.Array:
    """H = -sum p ln p with p = lambda / sum lambda; negative round-off clipped to 0, 0 ln 0 = 0."""
    lam = jnp.clip(eigenvalues, 0.0)
    return jnp.sum(entr(lam / jnp.sum(lam)))


def _exact(op, top_k: int | None) -> Spectrum:
    start = time.perf_counter()
    kernel = jnp.asarray(op.dense())
    raw = jnp.linalg.eigvalsh(kernel)[::-1]
    raw = np.asarray(jax.block_until_ready(raw))
    eigenvalues = np.clip(raw, 0.0, None)
    entropy = float(entropy_from_eigenvalues(jnp.asarray(raw)))
    kept = eigenvalues if top_k is None else eigenvalues[:top_k]
    return Spectrum(
        size=kernel.shape[0],
        # The trace of the kernel itself, not of its clipped eigenvalues.
        trace=float(jnp.trace(kernel)),
        trace_stderr=0.0,
        entropy=entropy,
        entropy_stderr=0.0,
        effective_rank=float(np.exp(entropy)),
        effective_rank_stderr=0.0,
        eigenvalues=kept,
        eigenvalue_residuals=np.zeros_like(kept),
        min_raw_eigenvalue=float(min(raw[-1], 0.0)),
        method="exact",
        reason="method='exact' was asked for",
        matvecs=0,
        seconds=time.perf_counter() - start,
    )


def spectrum(op, method: str = "exact", *, top_k: int | None = None) -> Spectrum:
    """Spectrum of the kernel `op` (an `NTKOperator`, or anything with `.dense()` and `.shape`).

    Parameters
    ----------
    op : the kernel operator.
    method : "exact" builds the kernel (structured path where the model allows) and diagonalises it.
    top_k : keep only the top `top_k` eigenvalues in the record (all by default for "exact").
    """
    if method not in METHODS:
        raise bad_value("method", repr(method), f"one of {METHODS}")
    return _exact(op, top_k)
