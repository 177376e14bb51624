"""Shared plumbing of the estimators: operators as block matvecs, their loops (compiled, or stepped
from Python), working and projected dtypes, and the spectral entropy (the one definition the
library uses)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import entr

from ntkspec._errors import bad_value, describe


def projected_dtype() -> jnp.dtype:
    """float64 where JAX has x64 enabled, else float32: the dtype of small projected problems and
    of accumulated traces and quadratic forms, whatever the working dtype of the kernel."""
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def as_block_matvec(op, n: int | None = None, dtype=None) -> tuple[Callable, int, jnp.dtype]:
    """Return `(matvec, n, dtype)` with `matvec(V: (n, k)) -> (n, k)` for `op`.

    `op` may be a square 2-D array, an object with `.shape`, `.dtype` and `.matvec` (such as an
    `NTKOperator`), or a plain callable on (n, k) blocks; a callable needs `n` and `dtype`.
    """
    if hasattr(op, "matvec") and hasattr(op, "shape"):
        shape = tuple(op.shape)
        _check_square("op", shape, op)
        return op.matvec, shape[0], jnp.dtype(op.dtype)
    if callable(op):
        if n is None or dtype is None:
            raise bad_value(
                "n, dtype",
                f"n={n}, dtype={dtype}",
                "both given when `op` is a plain matvec callable",
                "Pass n=<rows> and dtype=<float dtype>, or pass an array or an operator object.",
            )
        return op, int(n), jnp.dtype(dtype)
    array = jnp.asarray(op)
    _check_square("op", array.shape, array)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise bad_value("op", describe(array), "a floating-point matrix", "Cast it to float32/64.")
    return (lambda v: array @ v), array.shape[0], array.dtype


def loops_in_python(op) -> bool:
    """Whether the estimators step their loops around `op`'s products from Python: where the operator
    asks for it (`NTKOperator.loops_in_python`, a model that convolves, on the CPU). In a `while` body
    XLA:CPU gives convolutions layouts its fast convolution does not take (jax-ml/jax#12868)."""
    return bool(getattr(op, "loops_in_python", False))


def fori_loop(lower: int, upper: int, body: Callable, init, in_python: bool):
    """`jax.lax.fori_loop(lower, upper, body, init)`, or the same steps from Python where `in_python`:
    each product one compiled call when run eagerly, unrolled under a trace (as fast: 3 block Lanczos
    steps of a CNN's NTK, 1.6 s compiled unrolled against 1.8 s eager, by hand)."""
    if not in_python:
        return jax.lax.fori_loop(lower, upper, body, init)
    for i in range(lower, upper):
        init = body(i, init)
    return init


def while_loop(cond: Callable, body: Callable, init, in_python: bool):
    """`jax.lax.while_loop(cond, body, init)`, or the same loop from Python where `in_python` and the
    condition is concrete (eager); under a trace it stays a `while_loop`."""
    if not in_python or isinstance(cond(init), jax.core.Tracer):
        return jax.lax.while_loop(cond, body, init)
    while cond(init):
        init = body(init)
    return init


def compiled(fn: Callable, **jit_options) -> Callable:
    """`fn(op, ...)` compiled by `jax.jit` (`jit_options`) where `op` can be its argument (a pytree of
    array leaves) and does not step its loops from Python; otherwise `fn` itself, run eagerly."""
    jitted = jax.jit(fn, **jit_options)

    @functools.wraps(fn)
    def run(op, *args, **kwargs):
        leaves = jax.tree_util.tree_leaves(op)
        pytree = bool(leaves) and all(isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves)
        return (jitted if pytree and not loops_in_python(op) else fn)(op, *args, **kwargs)

    return run


def _check_square(name: str, shape: tuple, obj) -> None:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise bad_value(name, describe(obj), "a square (n, n) kernel or operator")


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """`value` as an int, raising unless it is an integer >= `minimum`."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise bad_value(name, repr(value), f"an integer >= {minimum}")
    return int(value)


def xlogx(x: jax.Array) -> jax.Array:
    """f(x) = x ln x with f(0) = 0, negative inputs (round-off) clipped to 0: never NaN."""
    x = jnp.clip(x, 0.0)
    safe = jnp.where(x > 0, x, 1.0)
    return jnp.where(x > 0, x * jnp.log(safe), 0.0)


def entropy_from_traces(xlogx_trace, trace):
    """H = ln T − S/T from S = tr(K ln K) and T = tr K (Roy & Vetterli 2007; erank = exp H)."""
    return jnp.log(trace) - xlogx_trace / trace


def entropy_from_eigenvalues(eigenvalues: jax.Array) -> jax.Array:
    """H = −Σ p ln p with p = λ / Σ λ, the same H as `entropy_from_traces(Σ λ ln λ, Σ λ)`.

    Negative round-off is clipped to 0 and 0 ln 0 = 0. Summed as p ln p (terms in [−1/e, 0], no
    cancellation between ln T and S/T), in the dtype of `eigenvalues`.
    """
    lam = jnp.clip(eigenvalues, 0.0)
    return jnp.sum(entr(lam / jnp.sum(lam)))


def sample_std(x: jax.Array, ddof: int = 1) -> jax.Array:
    """Sample standard deviation along axis 0; +inf when there are too few samples to estimate one.

    An estimate from m <= ddof samples has no error bar: +inf says so, where 0 would claim exactness.
    """
    m = x.shape[0]
    if m <= ddof:
        return jnp.full(x.shape[1:], jnp.inf, x.dtype)
    return jnp.std(x, axis=0, ddof=ddof)
