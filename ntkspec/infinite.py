"""Infinite-width kernels of the study's ReLU MLP: the NNGP and the width-aware NTK, and K∞ ⊗ I_C.

The network is the one `ntkspec.models.build("mlp", (d_in,), C, key, width=..., depth=L)` makes: L
Dense layers h_l = a_l W_l + b_l, a_1 = x, a_{l+1} = relu(h_l), f = h_L, in the standard
parameterisation with LeCun-normal weights W_l ~ N(0, 1/n_{l-1}) and zero-initialised, trainable
biases. `widths = (n_0, n_1, ..., n_{L-1})` lists the input size n_0 = d_in and the hidden widths; the
output size C does not enter, since the kernel of outputs c, c' is δ_cc' times the one given here.

NNGP (Neal 1996; Lee et al. 2018; Matthews et al. 2018). Each pre-activation h_l of width → ∞ is a
centred Gaussian process with covariance Σ_l:

    Σ_1(x, x') = x·x' / n_0,    Σ_{l+1}(x, x') = E_{(u, v) ~ N(0, Σ_l)} [relu(u) relu(v)].

With q = Σ_l(x, x), q' = Σ_l(x', x') and cos θ_l = Σ_l(x, x') / √(q q'), the arc-cosine kernels of
Cho & Saul ("Kernel methods for deep learning", NeurIPS 2009) give both expectations needed:

    E[relu(u) relu(v)] = √(q q') (sin θ_l + (π − θ_l) cos θ_l) / (2π),
    Ė_l(x, x') := E[relu'(u) relu'(v)] = (π − θ_l) / (2π).

`mlp_nngp` returns Σ_L, the covariance of each output f_c at initialisation.

NTK, width-aware. For a network of these widths the empirical NTK of outputs c, c' is the structured
sum `ntkspec.exact` computes, K = Σ_l (a_l·a_l' + 1)(δ_l·δ_l') with δ_l = ∂f_c/∂h_l (the "+1" is the
bias). At large width a_l·a_l' concentrates at n_{l-1} Σ_l (for l = 1 it is x·x' exactly: a_1 = x),
and δ_l = relu'(h_l) ⊙ (W_{l+1} δ_{l+1}) gives δ_l·δ_l' → Ė_l δ_{l+1}·δ_{l+1}' (each row of W_{l+1}
has variance 1/n_l), with δ_L·δ_L' = δ_cc'. Hence (Jacot, Gabriel & Hongler 2018; Arora et al. 2019,
here in the standard parameterisation and keeping every factor n_{l-1})

    K∞ = Σ_{l=1}^{L} (n_{l-1} Σ_l + 1) Π_{m=l}^{L-1} Ė_m,

computed forwards as Θ_1 = x·x' + 1, Θ_{l+1} = Θ_l Ė_l + n_l Σ_{l+1} + 1, K∞ = Θ_L. K∞ grows with
the widths (as the empirical NTK of the standard parameterisation does); the first layer's term x·x'
is kept whole (with d_in = 784 and widths of a few thousand it is not negligible). K∞ is the
expectation of the structured kernel to leading order: the empirical NTK of one network differs from
it by O(n^-1/2) relative fluctuations and its mean by O(1/n) (Hanin & Nica 2019).

Conventions at the edges: a zero input has h_l ≡ 0 and relu'(0) = 0 (JAX's), so its rows of Σ and of
Ė are zero and its NTK with anything is 1 (the output bias). For identical inputs cos θ = 1 exactly
(symmetric calls set the diagonal), so the diagonal carries no arccos round-off.

`mlp_operator(x, widths, C)` is K∞ ⊗ I_C, the (N·C)×(N·C) kernel of all outputs in the sample-major
row order of `ntkspec.ntk` (row i·C + c), as an operator that `ntkspec.spectrum`, the estimators and
`ntkspec.regression.fit` accept; its matvec computes K∞ in row blocks and never holds it whole.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ntkspec._errors import bad_value, check_finite, describe
from ntkspec.operator import cosine_scale

KERNELS = ("ntk", "nngp")
# Entries of one row block of K∞ (each of the ~8 temporaries of the recursion has this size).
BLOCK_ENTRIES = 2**21
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_widths(widths) -> tuple[int, ...]:
    ok = isinstance(widths, Sequence) and len(widths) >= 1
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in widths)
    if not ok:
        raise bad_value(
            "widths",
            repr(widths),
            "a sequence (d_in, n_1, ..., n_{L-1}) of positive integers: the input size, then the "
            "hidden widths of the L Dense layers",
        )
    return tuple(int(n) for n in widths)


def _check_inputs(name: str, x, widths: tuple[int, ...]) -> jax.Array:
    if not hasattr(x, "shape") or not hasattr(x, "dtype") or len(x.shape) != 2:
        raise bad_value(name, describe(x), "a 2-D array (N, d_in) of inputs")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise bad_value(name, describe(x), "floating-point inputs", "Cast with x.astype(float).")
    if x.shape[1] != widths[0]:
        raise bad_value(
            name,
            describe(x),
            f"d_in = widths[0] = {widths[0]} features per sample",
            "widths starts with the input size: widths = (d_in, n_1, ..., n_{L-1}).",
        )
    check_finite(name, x)
    return jnp.asarray(x)


def _check_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise bad_value("kernel", repr(kernel), f"one of {KERNELS}")
    return kernel


def _recursion(inner, sq1, sq2, widths: tuple[int, ...], kernel: str, coincide=None):
    """Σ_L ("nngp") or Θ_L ("ntk") from x·x', |x|², |x'|² (broadcastable), elementwise.

    `coincide` marks entries with x = x', where cos θ_1 is set to 1 exactly.
    """
    dtype = inner.dtype
    pi = jnp.asarray(math.pi, dtype)
    norm = jnp.sqrt(sq1 * sq2)
    alive = norm > 0  # a zero input has h_l = 0 at every layer: relu'(0) = 0, no correlation
    cos = jnp.clip(inner / jnp.where(alive, norm, 1), -1, 1)
    if coincide is not None:
        cos = jnp.where(coincide, jnp.ones_like(cos), cos)
    scale = norm / widths[0]  # √(Σ_l(x, x) Σ_l(x', x'))
    sigma = inner / widths[0]
    theta_sum = inner + 1
    for n in widths[1:]:
        theta = jnp.arccos(cos)
        derivative = jnp.where(alive, (pi - theta) / (2 * pi), 0)
        cos = (jnp.sin(theta) + (pi - theta) * cos) / pi
        scale = scale / 2
        sigma = scale * cos
        theta_sum = theta_sum * derivative + n * sigma + 1
    return sigma if kernel == "nngp" else theta_sum


def _block_rows(n_columns: int) -> int:
    return max(1, BLOCK_ENTRIES // max(n_columns, 1))


def _row_blocks(x1, x2, symmetric: bool, widths, kernel: str, rows: int, each):
    """Apply `each(block)` to the row blocks K(x1[I], x2) (rows × N2) and stack the results."""
    n1 = x1.shape[0]
    pad = -n1 % rows
    x1p = jnp.pad(x1, ((0, pad), (0, 0)))  # zero rows: finite kernel values, dropped below
    sq2 = jnp.sum(x2 * x2, axis=1)
    columns = jnp.arange(x2.shape[0])

    def one(args):
        xb, start = args
        inner = jnp.matmul(xb, x2.T, precision=_HIGHEST)
        sq1 = jnp.sum(xb * xb, axis=1)
        coincide = None
        if symmetric:
            coincide = (start + jnp.arange(rows))[:, None] == columns[None, :]
        block = _recursion(inner, sq1[:, None], sq2[None, :], widths, kernel, coincide)
        return each(block)

    starts = jnp.arange(0, n1 + pad, rows)
    out = jax.lax.map(one, (x1p.reshape(-1, rows, x1.shape[1]), starts))
    return out.reshape(-1, *out.shape[2:])[:n1]


@functools.partial(jax.jit, static_argnames=("widths", "kernel", "symmetric"))
def _matrix(x1, x2, widths, kernel, symmetric):
    return _row_blocks(x1, x2, symmetric, widths, kernel, _block_rows(x2.shape[0]), lambda k: k)


def _kernel_matrix(x1, x2, widths, kernel: str) -> jax.Array:
    widths = _check_widths(widths)
    symmetric = x2 is None or x2 is x1
    x1 = _check_inputs("x1", x1, widths)
    x2 = x1 if symmetric else _check_inputs("x2", x2, widths)
    dtype = jnp.result_type(x1.dtype, x2.dtype)
    return _matrix(x1.astype(dtype), x2.astype(dtype), widths, kernel, symmetric)


def mlp_nngp(
    x1: Float[Array, "N1 d_in"], x2: Float[Array, "N2 d_in"] | None, widths: Sequence[int]
) -> Float[Array, "N1 N2"]:
    """Infinite-width NNGP Σ_L(x1, x2) of the last pre-activation (each output) of the ReLU MLP.

    Parameters
    ----------
    x1, x2 : inputs (N1, d_in) and (N2, d_in); x2 = None (or x1 itself) gives the symmetric kernel
        of x1 with its diagonal exact.
    widths : (d_in, n_1, ..., n_{L-1}): input size, then the hidden widths of the L Dense layers.
        The NNGP depends on the depth only (the widths cancel); see the module docstring.

    Computed in the inputs' dtype (float64 when x64 is on and float64 arrays are passed).
    """
    return _kernel_matrix(x1, x2, widths, "nngp")


def mlp_ntk(
    x1: Float[Array, "N1 d_in"], x2: Float[Array, "N2 d_in"] | None, widths: Sequence[int]
) -> Float[Array, "N1 N2"]:
    """Width-aware infinite-width NTK of one output of the ReLU MLP, standard parameterisation.

    K∞ = Σ_l (n_{l-1} Σ_l + 1) Π_{m>=l} Ė_m (module docstring): the expectation, to leading order,
    of the empirical NTK `ntkspec.ntk(models.build("mlp", ...), x).dense()` of a network with these
    widths, whose (c, c') blocks are δ_cc' K∞. Arguments as in `mlp_nngp`.
    """
    return _kernel_matrix(x1, x2, widths, "ntk")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class InfiniteKernel:
    """K∞ ⊗ I_C (or the NNGP ⊗ I_C) of the ReLU MLP as an operator; build it with `mlp_operator`.

    Rows are sample-major (row i·C + c) as in `ntkspec.ntk`. With `x2` None it is the square kernel
    of `x1`, shape (N·C, N·C), with `.matvec`, `.diagonal()`, `.dense()` and `.normalized()` like
    `NTKOperator`; with `x2` given it is the cross kernel K(x1, x2) ⊗ I_C, shape (N1·C, N2·C), with
    `.matvec` and `.dense()`. A pytree: it passes through `jax.jit`. `scale` is None for the raw
    kernel and D^{-1/2} per sample for the cosine kernel.
    """

    x1: jax.Array
    x2: jax.Array | None
    scale: jax.Array | None
    widths: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    n_outputs: int = dataclasses.field(metadata=dict(static=True))
    kernel: str = dataclasses.field(metadata=dict(static=True))
    block_rows: int = dataclasses.field(metadata=dict(static=True))

    @property
    def _columns(self) -> jax.Array:
        return self.x1 if self.x2 is None else self.x2

    @property
    def shape(self) -> tuple[int, int]:
        return (self.x1.shape[0] * self.n_outputs, self._columns.shape[0] * self.n_outputs)

    @property
    def dtype(self) -> jnp.dtype:
        return self.x1.dtype

    def matvec(self, v: jax.Array) -> jax.Array:
        """(K∞ ⊗ I_C) v for v of shape (n,) or (n, k), n = N2·C; K∞ formed one row block at a time."""
        n = self.shape[1]
        if not hasattr(v, "shape") or v.ndim not in (1, 2) or v.shape[0] != n:
            raise bad_value("v", describe(v), f"shape ({n},) or ({n}, k), n = N·C rows")
        block = v[:, None] if v.ndim == 1 else v
        out = _infinite_matmat(self, jnp.asarray(block, self.dtype))
        return out[:, 0] if v.ndim == 1 else out

    def diagonal(self) -> Float[Array, " n"]:
        """diag (K∞ ⊗ I_C), exact (cos θ = 1 on the diagonal)."""
        self._require_square("diagonal")
        d = _sample_diagonal(self.x1, self.widths, self.kernel)
        if self.scale is not None:
            d = self.scale**2 * d
        return jnp.repeat(d, self.n_outputs)

    def dense(self) -> Float[Array, "n m"]:
        """K∞ ⊗ I_C as a dense (N1·C, N2·C) array."""
        k = _matrix(self.x1, self._columns, self.widths, self.kernel, self.x2 is None)
        if self.scale is not None:
            k = self.scale[:, None] * k * self.scale[None, :]
        return jnp.kron(k, jnp.eye(self.n_outputs, dtype=k.dtype))

    def normalized(self) -> InfiniteKernel:
        """The cosine kernel D^{-1/2} (K∞ ⊗ I_C) D^{-1/2} = (cosine K∞) ⊗ I_C."""
        self._require_square("normalized")
        if self.scale is not None:
            return self
        scale = cosine_scale(_sample_diagonal(self.x1, self.widths, self.kernel))
        return dataclasses.replace(self, scale=scale)

    def _require_square(self, what: str) -> None:
        if self.x2 is not None:
            raise bad_value(
                "operator",
                f"a cross kernel of shape {self.shape}",
                f"a square kernel (x2=None) for .{what}()",
            )


@functools.partial(jax.jit, static_argnames=("widths", "kernel"))
def _sample_diagonal(x, widths, kernel):
    sq = jnp.sum(x * x, axis=1)
    return _recursion(sq, sq, sq, widths, kernel, coincide=jnp.ones(sq.shape, bool))


@jax.jit
def _infinite_matmat(op: InfiniteKernel, block: jax.Array) -> jax.Array:
    c, k = op.n_outputs, block.shape[1]
    columns = op._columns
    v = block.reshape(columns.shape[0], c * k)  # (K ⊗ I_C) acts as K on the (N2, C·k) reshape
    if op.scale is not None:
        v = op.scale[:, None] * v
    out = _row_blocks(
        op.x1, columns, op.x2 is None, op.widths, op.kernel, op.block_rows,
        lambda kb: jnp.matmul(kb, v, precision=_HIGHEST),
    )  # fmt: skip
    if op.scale is not None:
        out = op.scale[:, None] * out
    return out.reshape(op.x1.shape[0] * c, k)


def mlp_operator(
    x1: Float[Array, "N1 d_in"],
    widths: Sequence[int],
    n_outputs: int = 1,
    *,
    x2: Float[Array, "N2 d_in"] | None = None,
    kernel: str = "ntk",
    block_rows: int | None = None,
) -> InfiniteKernel:
    """K∞ ⊗ I_C of the ReLU MLP as a matrix-free operator.

    Parameters
    ----------
    x1 : inputs (N, d_in): the rows (and, when `x2` is None, the columns).
    widths : (d_in, n_1, ..., n_{L-1}), as in `mlp_ntk`.
    n_outputs : C, the network's outputs; the kernel is (N·C)×(N·C), rows sample-major.
    x2 : column inputs for the cross kernel K(x1, x2) ⊗ I_C (predictions); None for the square one.
    kernel : "ntk" (`mlp_ntk`) or "nngp" (`mlp_nngp`).
    block_rows : rows of K∞ computed together by `matvec` (default: 2^21 entries per block).

    The matvec costs N1·N2·(d_in + O(L)) operations (K∞ is recomputed, never stored); when K∞ fits
    in memory, `ntkspec.regression.fit(mlp_ntk(x, None, widths), Y)` on the N×N kernel with the
    (N, C) targets is the same regression, C² times smaller.
    """
    widths = _check_widths(widths)
    kernel = _check_kernel(kernel)
    if not isinstance(n_outputs, int) or isinstance(n_outputs, bool) or n_outputs < 1:
        raise bad_value("n_outputs", repr(n_outputs), "a positive integer")
    x1 = _check_inputs("x1", x1, widths)
    if x2 is not None:
        x2 = _check_inputs("x2", x2, widths).astype(x1.dtype)
    columns = x1 if x2 is None else x2
    if block_rows is None:
        block_rows = _block_rows(columns.shape[0])
    if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
        raise bad_value("block_rows", repr(block_rows), "a positive integer")
    return InfiniteKernel(x1, x2, None, widths, n_outputs, kernel, min(block_rows, x1.shape[0]))
