"""Model adapter: turns what users have into one pure form, `apply(params, state, x) -> (N, C)`.

Accepted models:
- a pure function `apply_fn(params, x)` with any params pytree (this covers Flax linen:
  `module.apply` with its variables);
- a Flax nnx `Module` called as `module(x)`: split into a static graph, the `nnx.Param` leaves
  (differentiated) and the rest of its state (carried, not differentiated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from ntkspec._errors import bad_value, check_finite, describe


@dataclasses.dataclass(frozen=True)
class FunctionApply:
    """`apply_fn(params, x)` seen as `apply(params, state, x)`; compared by the function itself."""

    fn: Callable[[Any, jax.Array], jax.Array]

    def __call__(self, params, state, x):
        del state
        return self.fn(params, x)

    def __hash__(self):
        try:
            return hash(self.fn)
        except TypeError:  # an unhashable callable: identity keeps jit's cache correct
            return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, FunctionApply) and (self.fn is other.fn or _safe_equal(self.fn, other.fn))


def _safe_equal(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects whose == is not a bool are simply not equal
        return False


@dataclasses.dataclass(frozen=True)
class NNXApply:
    """An nnx module's static graph; `apply(params, state, x)` merges and calls it."""

    graphdef: Any

    def __call__(self, params, state, x):
        return nnx.merge(self.graphdef, params, state)(x)


def adapt(model, args: tuple) -> tuple[Callable, Any, Any, jax.Array]:
    """Return (apply, params, state, x) for `ntk(model, *args)`; see the module docstring."""
    if isinstance(model, nnx.Module):
        if len(args) != 1:
            raise bad_value(
                "args",
                f"{len(args)} positional argument(s) after an nnx module",
                "exactly one, the inputs x",
                "Call ntkspec.ntk(module, x).",
            )
        graphdef, params, state = nnx.split(model, nnx.Param, ...)
        return NNXApply(graphdef), params, state, args[0]
    if callable(model):
        if len(args) != 2:
            raise bad_value(
                "args",
                f"{len(args)} positional argument(s) after a function",
                "two: params and the inputs x",
                "Call ntkspec.ntk(apply_fn, params, x).",
            )
        return FunctionApply(model), args[0], None, args[1]
    raise bad_value(
        "model",
        describe(model),
        "a function apply_fn(params, x) or a Flax nnx Module",
        "For linen, pass module.apply and its variables: ntkspec.ntk(module.apply, variables, x).",
    )


def validate(apply: Callable, params, state, x) -> jax.ShapeDtypeStruct:
    """Check inputs and outputs; return the output's shape and dtype, (N, C)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise bad_value("x", describe(x), "an array of inputs with the batch on axis 0")
    if x.ndim == 0 or x.shape[0] == 0:
        raise bad_value("x", describe(x), "a non-empty batch (at least one sample on axis 0)")
    if not np.issubdtype(x.dtype, np.inexact):
        raise bad_value("x", describe(x), "floating-point inputs", "Cast with x.astype(float).")
    check_finite("params", params)
    check_finite("x", x)
    try:
        out = jax.eval_shape(apply, params, state, x)
    except Exception as error:
        raise bad_value(
            "model",
            f"a model that fails on x ({type(error).__name__}: {error})",
            f"a model callable on inputs like x ({describe(x)})",
        ) from error
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise bad_value(
            "model output",
            f"a {type(out).__name__}",
            "a single array of shape (N, C)",
            "Wrap the model so that it returns only the logits.",
        )
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise bad_value(
            "model output",
            f"shape {tuple(out.shape)}",
            f"shape (N, C) = ({x.shape[0]}, C), one row per sample of x",
            "Reshape or select the outputs to a 2-D (N, C) array.",
        )
    if not np.issubdtype(out.dtype, np.floating):
        raise bad_value("model output", f"dtype {out.dtype}", "a floating-point dtype")
    return out
