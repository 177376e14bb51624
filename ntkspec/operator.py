"""The empirical NTK as a linear operator, K = J J^T, never formed unless asked for.

J is the Jacobian of the N*C outputs f(theta, x) with respect to all parameters theta; rows are
sample-major (row = i*C + c). Kernel-vector products are K V = J (J^T V): one reverse pass (`jax.vjp`)
gives U = J^T V as a parameter-shaped pytree, one forward pass (`jax.linearize`) gives J U. Columns of
V are `vmap`ped in blocks of `probe_block`; samples are processed in chunks of `chunk_size`, so peak
memory stays O(params * probe_block + chunk) however large N is. The blocks and chunks go through
`jax.lax.scan`, or Python loops for a model that convolves on the CPU: there XLA:CPU gives the
convolutions of a loop body, even of a fully unrolled scan, layouts its fast (Eigen) convolution
does not take, and the products run about 40 times slower (jax-ml/jax#12868, `exact`); the
estimators step their own loops around such an operator from Python too (`loops_in_python`).

The cosine (normalised-gradient) NTK D^{-1/2} K D^{-1/2}, D = diag K, is the same operator with a
row scaling s = D^{-1/2}: K~ V = s * K (s * V).
"""

from __future__ import annotations

import dataclasses
import functools
from operator import itemgetter
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import Array, Float

from ntkspec import exact, sharding
from ntkspec._errors import bad_value, describe
from ntkspec._intercept import convolves
from ntkspec.model import adapt, validate
from ntkspec.precision import full_precision

PROBE_BYTES = 2**30
_on_its_mesh = sharding.computes_on(lambda op, *args, **kwargs: op.mesh)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NTKOperator:
    """Empirical NTK of `apply` at (params, x), shape (N*C, N*C). Build it with `ntkspec.ntk`.

    A pytree: it can be passed through `jax.jit`. `scale` is None for the raw kernel and
    D^{-1/2} for the cosine kernel. `mesh` is the Auto-typed mesh its arrays live on
    (`ntkspec.sharding.as_mesh`), or None.
    """

    params: Any
    state: Any
    x: jax.Array
    scale: jax.Array | None
    apply: Any = dataclasses.field(metadata=dict(static=True))
    n_outputs: int = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))
    chunk_size: int = dataclasses.field(metadata=dict(static=True))
    probe_block: int = dataclasses.field(metadata=dict(static=True))
    mesh: Mesh | None = dataclasses.field(default=None, metadata=dict(static=True))

    @property
    def n_samples(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        n = self.n_samples * self.n_outputs
        return (n, n)

    @property
    def loops_in_python(self) -> bool:
        """Whether loops around this operator's products run in Python: for a model that convolves, on
        the CPU. Its own blocks and chunks do; so do the estimators' loops (`ntkspec.estimators`)."""
        if jax.default_backend() != "cpu":
            return False
        jaxpr = jax.make_jaxpr(lambda p: self.apply(p, self.state, self.x[:1]))(self.params).jaxpr
        return convolves(jaxpr)

    @_on_its_mesh
    @full_precision
    def matvec(self, v: jax.Array) -> jax.Array:
        """K v for v of shape (n,) or (n, k)."""
        n = self.shape[0]
        if not hasattr(v, "shape") or v.ndim not in (1, 2) or v.shape[0] != n:
            raise bad_value("v", describe(v), f"shape ({n},) or ({n}, k), n = N*C rows")
        block = v[:, None] if v.ndim == 1 else v
        out = _matmat(self, jnp.asarray(block, self.dtype))
        return out[:, 0] if v.ndim == 1 else out

    @_on_its_mesh
    @full_precision
    def diagonal(self, path: str = "auto") -> Float[Array, " n"]:
        """diag K exactly: squared gradient norm of every (sample, output); `path` as in `dense`."""
        if path not in exact.PATHS:
            raise bad_value("path", repr(path), f"one of {exact.PATHS}")
        d = _diagonal(self, path)
        return d if self.scale is None else self.scale**2 * d

    @_on_its_mesh
    @full_precision
    def dense(self, path: str = "auto") -> Float[Array, "n n"]:
        """K exactly; `path` is "auto" (structured where the model allows), "structured" or
        "jacobian" (blocked Jacobian contraction for every parameter; for comparison)."""
        if path not in exact.PATHS:
            raise bad_value("path", repr(path), f"one of {exact.PATHS}")
        k = _dense(self, path)
        return k if self.scale is None else self.scale[:, None] * k * self.scale[None, :]

    @_on_its_mesh
    @full_precision
    def normalized(self, diagonal: jax.Array | None = None) -> NTKOperator:
        """The cosine NTK D^{-1/2} K D^{-1/2} (rows with D = 0, dead outputs, are set to zero);
        `diagonal`, if given, is D = diag K, already computed."""
        if self.scale is not None:
            return self
        d = _diagonal(self, "auto") if diagonal is None else diagonal
        return dataclasses.replace(self, scale=cosine_scale(d))


def cosine_scale(d: jax.Array) -> jax.Array:
    """s = D^{-1/2} for the cosine kernel s K s; zero where D = 0 (dead outputs)."""
    return jnp.where(d > 0, jax.lax.rsqrt(jnp.where(d > 0, d, 1)), 0)


def ntk(
    model, *args, chunk_size: int | None = None, probe_block: int | None = None, mesh: Mesh | None = None
) -> NTKOperator:
    """Empirical NTK operator of a model on a batch of inputs.

    Parameters
    ----------
    model : `apply_fn` with `apply_fn(params, x) -> (N, C)`, called as `ntk(apply_fn, params, x)`
        (Flax linen: `ntk(module.apply, variables, x)`), or a Flax nnx Module called as `module(x)`,
        as `ntk(module, x)`.
    chunk_size : samples per forward/backward pass (default: all N up to 256).
    probe_block : columns of V processed together by `matvec`; J^T V holds probe_block copies of
        the parameters. Default: as many as fit `PROBE_BYTES` (1 GiB), between 1 and 32.
    mesh : a `jax.sharding.Mesh` with axes "data" and "model", Explicit or Auto (`jax.make_mesh`,
        `Mesh(...)`, `ntkspec.sharding.make_mesh`); default: the mesh set with `jax.set_mesh`, if
        any. Samples and probes are split on "data", wide parameter dimensions on "model"; the
        numbers equal the single-device ones.

    Numerics follow the dtype of params and x (float32 by default; float64 with x64 enabled).
    """
    apply, params, state, x = adapt(model, args)
    out = validate(apply, params, state, x)
    if probe_block is None:
        param_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(params))
        probe_block = int(min(32, max(1, PROBE_BYTES // max(param_bytes, 1))))
    if probe_block < 1:
        raise bad_value("probe_block", probe_block, "a positive integer")
    if chunk_size is None:
        chunk_size = min(x.shape[0], 256)
    if chunk_size < 1:
        raise bad_value("chunk_size", chunk_size, "a positive integer")
    mesh = sharding.as_mesh(mesh)
    if mesh is not None:
        data = mesh.shape["data"]
        chunk_size = -(-chunk_size // data) * data  # every chunk splits evenly over "data"
        params, x = sharding.shard_params(params, mesh), sharding.shard_batch(x, mesh)
    return NTKOperator(params, state, x, None, apply, out.shape[1], out.dtype, chunk_size, probe_block, mesh)


def _chunks(op: NTKOperator, tree):
    """Pad the sample axis of every leaf to a multiple of chunk_size; reshape to (chunks, size, ...).

    Padded inputs repeat the first sample (always a valid input); padded V rows are zero.
    """
    n, size = op.n_samples, op.chunk_size
    pad = -n % size

    def split(leaf, fill_first):
        if pad:
            filler = jnp.repeat(leaf[:1], pad, 0) if fill_first else jnp.zeros_like(leaf[:pad])
            leaf = jnp.concatenate([leaf, filler])
        return leaf.reshape(-1, size, *leaf.shape[1:])

    return split(tree[0], True), split(tree[1], False)


@jax.jit
def _matmat(op: NTKOperator, block: jax.Array) -> jax.Array:
    if op.scale is not None:
        block = op.scale[:, None] * block
    k = block.shape[1]
    width = min(k, op.probe_block)
    pad = -k % width
    block = jnp.pad(block, ((0, 0), (0, pad)))
    columns = block.T.reshape(-1, width, block.shape[0])  # (blocks, width, n)
    in_python = op.loops_in_python
    out = _map(functools.partial(_kernel_times, op, in_python=in_python), columns, in_python)
    out = out.reshape(-1, block.shape[0])[:k].T
    return out if op.scale is None else op.scale[:, None] * out


def _kernel_times(op: NTKOperator, columns: jax.Array, in_python: bool) -> jax.Array:
    """K V^T for V of shape (width, n): J^T V accumulated over sample chunks, then J U chunk by chunk."""
    width = columns.shape[0]
    v = columns.reshape(width, op.n_samples, op.n_outputs).transpose(1, 0, 2)  # (N, width, C)
    xs, vs = _chunks(op, (op.x, v))
    xs = sharding.constrain_samples(xs, op.mesh, axis=1)
    vs = sharding.constrain_samples(vs, op.mesh, axis=1)

    def model(params, x):
        return op.apply(params, op.state, x)

    def pull(total, chunk):
        x, v = chunk
        _, vjp = jax.vjp(lambda p: model(p, x), op.params)
        u = jax.vmap(lambda c: vjp(c)[0])(v.transpose(1, 0, 2))  # vmap over the width columns
        return jax.tree.map(jnp.add, total, u), None

    zeros = jax.tree.map(lambda p: jnp.zeros((width, *p.shape), p.dtype), op.params)
    u, _ = _scan(pull, zeros, (xs, vs), in_python)

    def push(x):
        _, jvp = jax.linearize(lambda p: model(p, x), op.params)
        return jax.vmap(jvp)(u)  # (width, size, C)

    out = _map(push, xs, in_python)  # (chunks, width, size, C)
    out = out.transpose(1, 0, 2, 3).reshape(width, -1, op.n_outputs)[:, : op.n_samples]
    return out.reshape(width, -1)


def _scan(f, carry, xs, in_python: bool):
    """`jax.lax.scan(f, carry, xs)`, or the same steps as a Python loop where `in_python`."""
    if not in_python:
        return jax.lax.scan(f, carry, xs)
    ys = []
    for i in range(jax.tree.leaves(xs)[0].shape[0]):
        carry, y = f(carry, jax.tree.map(itemgetter(i), xs))
        ys.append(y)
    return carry, jax.tree.map(lambda *parts: jnp.stack(parts), *ys)


def _map(f, xs, in_python: bool):
    """`jax.lax.map(f, xs)`, or a Python loop where `in_python`."""
    return _scan(lambda _, x: (None, f(x)), None, xs, in_python)[1]


@functools.partial(jax.jit, static_argnums=1)
def _diagonal(op: NTKOperator, path: str) -> jax.Array:
    return exact.diagonal(op.apply, op.params, op.state, op.x, op.chunk_size, path)


@functools.partial(jax.jit, static_argnums=1)
def _dense(op: NTKOperator, path: str) -> jax.Array:
    k = exact.kernel(op.apply, op.params, op.state, op.x, op.chunk_size, path)
    return sharding.constrain_samples(k, op.mesh)  # rows of K on "data" (replicated if uneven)
