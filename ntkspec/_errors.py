"""Message builders for bad input: every message names the argument, what came and what was expected."""

from __future__ import annotations

import numpy as np


def bad_value(name: str, got: object, expected: str, fix: str = "") -> ValueError:
    """A `ValueError` saying `name` was `got` where `expected` was wanted, with an optional fix."""
    message = f"`{name}`: got {got}, expected {expected}."
    if fix:
        message += f" {fix}"
    return ValueError(message)


def describe(array: object) -> str:
    """Short description of an array-like for error messages: shape and dtype."""
    shape = getattr(array, "shape", None)
    dtype = getattr(array, "dtype", None)
    if shape is None:
        return f"an object of type {type(array).__name__}"
    return f"an array of shape {tuple(shape)} and dtype {dtype}"


def check_finite(name: str, tree: object) -> None:
    """Raise if any floating leaf of `tree` holds NaN or Inf (on concrete arrays only)."""
    import jax

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.core.Tracer) or not hasattr(leaf, "dtype"):
            continue
        if not np.issubdtype(leaf.dtype, np.inexact):
            continue
        bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
        if bad:
            where = name + jax.tree_util.keystr(path)
            raise bad_value(
                where,
                f"{bad} non-finite value(s) (NaN or Inf) in {describe(leaf)}",
                "finite values",
                "Check the data pipeline or the training run that produced them.",
            )
