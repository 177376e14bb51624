"""Matrix-product precision: float32 products at full float32 precision on every backend.

On GPUs JAX's default precision for float32 matrix products is TF32 (a 10-bit mantissa). On one
H200 it put the exact NTK of a width-1024 MLP 2.6e-3 (relative Frobenius norm) from its float64
value, against 1.1e-7 at "highest" (benchmarks/RESULTS.md, "GPU"). ntkspec's entry points (the
operator's methods, `spectrum`, `spectra`, training and a sweep's records) therefore trace their
programs at "highest", unless the user has chosen a precision (`jax_default_matmul_precision`, or
the environment variable JAX_DEFAULT_MATMUL_PRECISION): then theirs is kept. On CPUs the two are
the same arithmetic.
"""

from __future__ import annotations

import functools

import jax


def full_precision(fn):
    """Decorator: run `fn` under `jax.default_matmul_precision("highest")` unless a precision is set."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if jax.config.jax_default_matmul_precision is not None:
            return fn(*args, **kwargs)
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return run
