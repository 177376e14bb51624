"""One entry point for the spectrum of a kernel: `spectrum(op, method=...)` returns a `Spectrum`.

Spectral entropy (von Neumann entropy of the trace-normalised kernel) and effective rank
(Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007):

    p_i = lambda_i / tr K,    H = -sum_i p_i ln p_i,    erank = exp(H).

Two methods. "exact" forms K (`op.dense()`) and diagonalises it. "stochastic" takes the trace from
the exact diagonal (`op.diagonal()`) and runs the Krylov-aware estimator with the control variate
(`ntkspec.estimators.krylov_spectrum`): one block Krylov space plus residual Lanczos probes give the
entropy with a standard error and a quadrature bias bound, the top eigenvalues with residuals, and a
trace check. "auto" picks exact when the dense kernel fits the memory budget and its estimated cost
(forming K plus an O(n³) eigendecomposition, in matvec-equivalents) is below the stochastic budget.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ntkspec import sharding
from ntkspec._errors import bad_value, describe
from ntkspec.estimators._common import compiled, entropy_from_eigenvalues
from ntkspec.estimators.dense import as_operator
from ntkspec.estimators.quadrature import krylov_spectrum
from ntkspec.operator import cosine_scale
from ntkspec.precision import full_precision

METHODS = ("auto", "exact", "stochastic")
# Matvecs of the stochastic method: 400 gave ~0.2 % error in the effective rank on n <= 5000 kernels
# (synthetic power laws and MLP NTKs); about 1500 buys 0.1 % everywhere measured (ESTIMATORS notes).
DEFAULT_BUDGET = 400
DEFAULT_TOP_K = 10
# Largest dense kernel "auto" will form, in bytes (n² · itemsize).
DEFAULT_MEMORY_BUDGET = 2 * 2**30
# Cost model of the exact method in matvec-equivalents, measured on CPU for MLP NTKs (n = 1000:
# forming K ≈ 14 matvecs, float64 eigvalsh ≈ 18 matvecs; forming grows ~linearly, eigh as n³).
FORM_MATVECS_PER_ROW = 14.0 / 1000
EIGH_MATVECS_AT_1000_ROWS = 18.0
# An `NTKOperator` on a mesh is measured there, whatever mesh the caller has set.
_on_its_mesh = sharding.computes_on(lambda op, *args, **kwargs: getattr(op, "mesh", None))


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Spectral summary of one symmetric PSD kernel (host values, ready to store).

    Standard errors are 0 for exact results. For stochastic ones, `entropy_bias_bound` bounds the
    quadrature bias of the entropy (add it to 2·stderr for a conservative interval), and
    `trace_check` ± `trace_check_stderr` is the trace re-estimated from the same matvecs, a
    consistency check against the exact `trace`. `eigenvalues` are descending: all of them for the
    exact method, the top ones otherwise, with `eigenvalue_residuals` ||K v - theta v|| beside them.
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
    trace_check: float = float("nan")
    trace_check_stderr: float = float("nan")

    @property
    def mean_diagonal(self) -> float:
        """tr K / n, the normalisation other NTK tools report as "the trace"."""
        return self.trace / self.size


def eigvalsh(kernel: jax.Array) -> np.ndarray:
    """Eigenvalues of a symmetric kernel, ascending, in its dtype.

    On CPU, SciPy's LAPACK divide-and-conquer without eigenvectors (`driver="evd"`) is used: it was
    9x faster than `jnp.linalg.eigvalsh` at 1280 rows (0.15 s against 1.35 s, float32, 2-core CPU).
    On accelerators the device's own solver is used.
    """
    if all(device.platform == "cpu" for device in kernel.devices()):
        return scipy.linalg.eigh(np.asarray(kernel), eigvals_only=True, driver="evd", check_finite=False)
    return np.asarray(jnp.linalg.eigvalsh(kernel))


def _exact(op, top_k: int | None, reason: str) -> Spectrum:
    start = time.perf_counter()
    kernel = jnp.asarray(op.dense())
    raw = eigvalsh(kernel)[::-1]
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
        reason=reason,
        matvecs=0,
        seconds=time.perf_counter() - start,
    )


def exact_cost(n: int) -> float:
    """Estimated cost of the exact method in matvec-equivalents: forming K plus `eigvalsh`."""
    return FORM_MATVECS_PER_ROW * n + EIGH_MATVECS_AT_1000_ROWS * (n / 1000) ** 3


def _stochastic(op, key, budget: int, top_k: int, reason: str, diagonal=None) -> Spectrum:
    start = time.perf_counter()
    n = op.shape[0]
    diagonal = jnp.asarray(op.diagonal() if diagonal is None else diagonal)
    trace = jnp.sum(diagonal.astype(jax.dtypes.canonicalize_dtype(jnp.float64)))
    settings = {"budget": budget, "top_k": min(top_k, n)}
    result = _krylov_spectrum(op, key, trace=trace, **settings)
    result = jax.device_get(result)
    return Spectrum(
        size=n,
        trace=float(result.trace),
        trace_stderr=0.0,
        entropy=float(result.entropy),
        entropy_stderr=float(result.entropy_stderr),
        effective_rank=float(result.effective_rank),
        effective_rank_stderr=float(result.effective_rank_stderr),
        eigenvalues=np.asarray(result.eigenvalues),
        eigenvalue_residuals=np.asarray(result.eigenvalue_residuals),
        min_raw_eigenvalue=float("nan"),
        method="stochastic",
        reason=reason,
        matvecs=int(result.matvecs),
        seconds=time.perf_counter() - start,
        entropy_bias_bound=float(result.entropy_bias_bound),
        trace_check=float(result.trace_check),
        trace_check_stderr=float(result.trace_check_stderr),
    )


# Compiled once per operator structure, shape and settings (the operator is an argument, not a
# constant); stepped from Python for an operator that asks for it.
_krylov_spectrum = compiled(krylov_spectrum, static_argnames=("budget", "top_k"))


@_on_its_mesh
@full_precision
def spectrum(
    op,
    method: str = "auto",
    *,
    key=None,
    budget: int | None = None,
    top_k: int | None = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
) -> Spectrum:
    """Spectrum of the kernel `op`.

    Parameters
    ----------
    op : the kernel: an `NTKOperator`, anything with `.shape`, `.dtype`, `.matvec`, `.diagonal()`
        and `.dense()`, or a dense square array (wrapped by `ntkspec.estimators.as_operator`).
    method : "exact" forms and diagonalises K; "stochastic" uses the exact diagonal for the trace
        and the Krylov-aware estimator for entropy, effective rank and top eigenvalues; "auto" picks
        exact when n² · itemsize <= `memory_budget` and `exact_cost(n)` <= `budget`, and says why in
        the record's `reason`.
    key : PRNG key, required whenever the stochastic method runs.
    budget : matvecs for the stochastic method (default 400: ~0.2 % on erank for n <= 5000;
        ~1500 buys 0.1 %).
    top_k : eigenvalues kept in the record (exact: all by default; stochastic: 10 by default, best
        chosen at a multiplet boundary, e.g. C for a C-output NTK).
    memory_budget : bytes the dense kernel may take for "auto" (default 2 GiB).
    """
    op, method, reason, budget = _choose(op, method, budget, top_k, memory_budget)
    if method == "exact":
        return _exact(op, top_k, reason)
    return _stochastic(
        op, _require_key(key, reason), budget, DEFAULT_TOP_K if top_k is None else top_k, reason
    )


@_on_its_mesh
@full_precision
def spectra(
    op,
    method: str = "auto",
    *,
    key=None,
    budget: int | None = None,
    top_k: int | None = None,
    memory_budget: float = DEFAULT_MEMORY_BUDGET,
) -> tuple[Spectrum, Spectrum]:
    """Spectra of K and of the cosine kernel D^{-1/2} K D^{-1/2} (D = diag K), as `spectrum` would
    give them for `op` and `op.normalized()`; the exact method forms K once for both."""
    op, method, reason, budget = _choose(op, method, budget, top_k, memory_budget)
    if method == "exact":
        kernel = jnp.asarray(op.dense())
        scale = cosine_scale(jnp.diagonal(kernel))
        cosine = scale[:, None] * kernel * scale[None, :]
        return _exact(as_operator(kernel), top_k, reason), _exact(as_operator(cosine), top_k, reason)
    raw_key, cosine_key = jax.random.split(_require_key(key, reason))
    top_k = DEFAULT_TOP_K if top_k is None else top_k
    # diag K is formed once: the cosine kernel's diagonal is 1, or 0 for dead outputs.
    diagonal = jnp.asarray(op.diagonal())
    cosine_diagonal = (diagonal > 0).astype(diagonal.dtype)
    return (
        _stochastic(op, raw_key, budget, top_k, reason, diagonal),
        _stochastic(op.normalized(diagonal), cosine_key, budget, top_k, reason, cosine_diagonal),
    )


def choose_method(
    op, method: str = "auto", *, budget: int | None = None, memory_budget: float = DEFAULT_MEMORY_BUDGET
) -> str:
    """The method, "exact" or "stochastic", that `spectrum` and `spectra` use for these arguments."""
    return _choose(op, method, budget, None, memory_budget)[1]


def _choose(op, method: str, budget: int | None, top_k: int | None, memory_budget: float):
    """Validate the arguments; return (operator, "exact" | "stochastic", reason, budget)."""
    if method not in METHODS:
        raise bad_value("method", repr(method), f"one of {METHODS}")
    if not (hasattr(op, "matvec") and hasattr(op, "dense")):
        op = as_operator(op)
    shape = tuple(op.shape)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise bad_value("op", describe(op), "a square (n, n) kernel operator")
    n = shape[0]
    if budget is None:
        budget = DEFAULT_BUDGET
    if not isinstance(budget, int) or budget < 1:
        raise bad_value("budget", repr(budget), "a positive integer number of matvecs")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise bad_value("top_k", repr(top_k), "a positive integer or None")
    if method != "auto":
        return op, method, f"method={method!r} was asked for", budget
    dense_bytes = n * n * jnp.dtype(op.dtype).itemsize
    cost = exact_cost(n)
    fits = dense_bytes <= memory_budget
    cheaper = cost <= budget
    facts = (
        f"dense kernel {_bytes(dense_bytes)} vs memory budget {_bytes(memory_budget)}; "
        f"exact cost ≈ {cost:.0f} matvec-equivalents vs stochastic budget {budget}"
    )
    if fits and cheaper:
        return op, "exact", f"auto chose exact: {facts}", budget
    why = "does not fit in memory" if not fits else "costs more than the stochastic budget"
    return op, "stochastic", f"auto chose stochastic (exact {why}): {facts}", budget


def _require_key(key, reason: str):
    if key is None:
        raise bad_value(
            "key",
            None,
            "a PRNG key for the stochastic method",
            f"Pass key=jax.random.key(seed) ({reason}).",
        )
    return key


def _bytes(value: float) -> str:
    if value <= 0:
        return "0 B"
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    power = min(int(math.log(value, 1024)), len(units) - 1)
    return f"{value / 1024**power:.3g} {units[power]}"
