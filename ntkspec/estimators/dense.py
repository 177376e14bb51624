"""A dense symmetric matrix seen through the kernel-operator interface (`as_operator`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ntkspec._errors import bad_value, describe
from ntkspec.operator import cosine_scale


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenseOperator:
    """A symmetric PSD matrix with the interface of `NTKOperator`: `.shape`, `.dtype`, `.matvec`,
    `.diagonal()`, `.dense()`, `.normalized()`. A pytree, so it passes through `jit` and `vmap`."""

    matrix: jax.Array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    @property
    def dtype(self) -> jnp.dtype:
        return self.matrix.dtype

    def matvec(self, v: jax.Array) -> jax.Array:
        """K v for v of shape (n,) or (n, k)."""
        return self.matrix @ v

    def diagonal(self) -> jax.Array:
        return jnp.diagonal(self.matrix)

    def dense(self) -> jax.Array:
        return self.matrix

    def normalized(self, diagonal: jax.Array | None = None) -> DenseOperator:
        """The cosine kernel D^{-1/2} K D^{-1/2}, D = diag K (zero diagonal entries left at 0);
        `diagonal`, if given, is D, already computed."""
        scale = cosine_scale(self.diagonal() if diagonal is None else diagonal)
        return DenseOperator(self.matrix * scale[:, None] * scale[None, :])


def as_operator(matrix) -> DenseOperator:
    """Wrap a dense square floating-point matrix (symmetric PSD kernel) as an operator."""
    array = jnp.asarray(matrix)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise bad_value("matrix", describe(array), "a square (n, n) matrix")
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise bad_value("matrix", describe(array), "a floating-point matrix", "Cast it to float32/64.")
    return DenseOperator(array)
