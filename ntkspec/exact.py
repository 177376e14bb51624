"""Exact kernels: K = J J^T and diag K, without ever holding all of J.

Structured path (Dense layers and convolutions, found in the model's jaxpr by `ntkspec._intercept`):
for a Dense layer z = a W + b with per-sample input a_i and sensitivities delta_{i,c} = d f_{i,c} / d z_i,

    K[(i,c),(j,c')] = sum_l (a_{l,i} . a_{l,j} + 1) (delta_{l,i,c} . delta_{l,j,c'}),
    diag K[(i,c)]   = sum_l (|a_{l,i}|^2 + 1) |delta_{l,i,c}|^2

("+1" only where the layer's bias was recognised). One reverse pass per output class gives every
delta; the cost is C backward passes plus sum_l (N C)^2 d_l multiply-adds, against (N C)^2 P for the
Jacobian contraction. (Novak, Sohl-Dickstein & Schoenholz, "Fast finite width neural tangent
kernel", ICML 2022; the diagonal is Goodfellow, "Efficient per-example gradient computations", 2015.)
A convolution is a Dense layer shared over the output positions s: z_s = P_s W + b with P_s the
input patch under position s, so its per-sample gradient is G_{i,c} = P_i^T delta_{i,c} (bias:
sum_s delta_{i,c,s}), one matrix product from the same reverse pass; its block of K is G G^T. The
patches come from padding and strided slices, not from a convolution: the generic path's per-sample
kernel gradients are convolutions grouped over the samples, which XLA:CPU runs slowly (Rochette,
Manoel & Tramel, "Efficient per-example gradient computations in convolutional neural networks", 2019).

Generic path (every other parameter, and in `kernel` a convolution whose G does not fit
`BLOCK_BYTES`): per-sample Jacobians of blocks of parameters, each block sized so that its (N C) x
P_block Jacobian fits `BLOCK_BYTES`, contracted and summed. Large leaves are split into row blocks.

Parameter space (`parameter_gram`, convolutions on the generic path): the P x P Gram J^T J and J^T Y,
for primal kernel regression when N C > P. A Dense layer's gradient for (i, c) is abar_i (x)
delta_{i,c}, abar = (a, 1), so the block of J^T J between layers l and m is

    sum_i (abar_{l,i} abar_{m,i}^T) (x) M_{lm,i},   M_{lm,i} = sum_c delta_{l,i,c} delta_{m,i,c}^T,

N d_l n_l n_m d_m multiply-adds against N C d_l n_l d_m n_m for the Jacobian product: C times fewer.

Samples go in chunks, vmapped within a chunk; the chunks go through `jax.lax.map`, except for a
model that convolves on the CPU: XLA:CPU runs a convolution inside a `while` loop body many times
slower than outside one (jax-ml/jax#12868), so there the chunks are a Python loop
(`benchmarks/conv_kernel.py`).

All paths assume the model treats samples independently (no batch statistics across the batch).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntkspec._errors import bad_value
from ntkspec._intercept import ConvLayer, Structure, find_structure, perturbed_call

PATHS = ("auto", "structured", "jacobian")
BLOCK_BYTES = 256 * 2**20
GRAM_BYTES = 256 * 2**20
_HIGHEST = jax.lax.Precision.HIGHEST

# A block is a tuple of (leaf index, first row, last row + 1) slices of parameter leaves.
_Block = tuple[tuple[int, int, int], ...]


def _flat(apply: Callable, params):
    leaves, treedef = jax.tree.flatten(params)

    def fn(leaves, state, x):
        return apply(jax.tree.unflatten(treedef, leaves), state, x)

    return fn, leaves


def _structure(fn, leaves, state, x, path: str) -> Structure:
    structure = find_structure(fn, leaves, state, x[:1])
    if path == "jacobian":
        return Structure((), tuple(range(len(leaves))), convolves=structure.convolves)
    if path == "structured" and not structure.layers + structure.convs:
        raise bad_value(
            "path",
            "'structured'",
            "a model with Dense or convolution layers",
            "No Dense or convolution layer was found in this model; use path='auto'.",
        )
    return structure


def _blocks(leaves: Sequence[jax.Array], rest: Sequence[int], rows_total: int) -> list[_Block]:
    """Group the rest leaves into blocks whose Jacobian (rows_total x size) fits BLOCK_BYTES."""
    blocks, current, used = [], [], 0
    for i in rest:
        leaf = leaves[i]
        itemsize = jnp.dtype(leaf.dtype).itemsize
        capacity = max(1, BLOCK_BYTES // (rows_total * itemsize))
        if leaf.ndim == 0 or leaf.size <= capacity:
            if used + leaf.size > capacity and current:
                blocks.append(tuple(current))
                current, used = [], 0
            current.append((i, 0, leaf.shape[0] if leaf.ndim else 0))
            used += leaf.size
            continue
        row = leaf.size // leaf.shape[0]
        step = max(1, capacity // row)
        blocks += [((i, a, min(a + step, leaf.shape[0])),) for a in range(0, leaf.shape[0], step)]
    return blocks + ([tuple(current)] if current else [])


def _map(f: Callable, x: jax.Array, chunk: int, structure: Structure):
    """f over the samples of x (a pytree of per-sample results), `chunk` samples vmapped at a time:
    `jax.lax.map`, or a Python loop over the chunks for a model that convolves on the CPU."""
    if not (structure.convolves and jax.default_backend() == "cpu"):
        return jax.lax.map(f, x, batch_size=chunk)
    chunks = [jax.vmap(f)(x[start : start + chunk]) for start in range(0, x.shape[0], chunk)]
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *chunks)


def _block_jacobian(fn, leaves, state, x, structure: Structure, block: _Block, chunk: int) -> jax.Array:
    """Per-sample Jacobian (N, C, P_block) of the outputs with respect to one block of parameters."""

    def one(x_i):
        def f(pieces):
            full = list(leaves)
            for (i, a, b), piece in zip(block, pieces, strict=True):
                whole = leaves[i].ndim == 0 or (a, b) == (0, leaves[i].shape[0])
                full[i] = piece if whole else full[i].at[a:b].set(piece)
            return fn(full, state, x_i[None])[0]

        pieces = [leaves[i] if leaves[i].ndim == 0 else leaves[i][a:b] for i, a, b in block]
        out, vjp = jax.vjp(f, pieces)
        (grads,) = jax.vmap(vjp)(jnp.eye(out.shape[0], dtype=out.dtype))
        return jnp.concatenate([g.reshape(out.shape[0], -1) for g in grads], axis=1)

    return _map(one, x, chunk, structure)


def _patches(conv: ConvLayer, a: jax.Array) -> jax.Array:
    """Input patches (S, F C_in) of one sample's input `a` (`conv.lhs_spec` layout, batch of one),
    S over the output positions, so that z_s = patches_s . W for the kernel W as (F C_in, C_out)
    in some fixed order. Padding (lhs dilation as interior padding), then one strided slice per
    filter offset."""
    spec = conv.lhs_spec
    a = jnp.transpose(a, (spec[0], *spec[2:], spec[1]))[0]  # (spatial..., C_in)
    pads = [(low, high, d - 1) for (low, high), d in zip(conv.padding, conv.lhs_dilation, strict=True)]
    a = jax.lax.pad(a, jnp.zeros((), a.dtype), [*pads, (0, 0, 0)])
    out = [conv.out_shape[axis] for axis in conv.out_spec[2:]]
    slices = []
    for offset in itertools.product(*map(range, conv.filter_shape)):
        start = [o * d for o, d in zip(offset, conv.rhs_dilation, strict=True)]
        stop = [b + (m - 1) * t + 1 for b, m, t in zip(start, out, conv.strides, strict=True)]
        slices.append(jax.lax.slice(a, [*start, 0], [*stop, a.shape[-1]], [*conv.strides, 1]))
    return jnp.stack(slices, axis=-2).reshape(math.prod(out), -1)


def _conv_gradient(conv: ConvLayer, a: jax.Array, delta: jax.Array) -> jax.Array:
    """Per-sample gradient (C, P_conv) of a convolution's kernel (then bias) from its input `a` and
    sensitivities `delta` (C, *out_shape): G_c = patches^T delta_c, bias sum_s delta_c. Parameters in
    an order of their own (fine for inner products, not for `parameter_gram`)."""
    spec = conv.out_spec
    moved = jnp.transpose(delta, (0, *(1 + axis for axis in (spec[0], *spec[2:], spec[1]))))
    moved = moved.reshape(delta.shape[0], -1, moved.shape[-1])  # (C, S, C_out)
    g = jnp.einsum("sk,cso->cko", _patches(conv, a), moved, precision=_HIGHEST)
    g = g.reshape(delta.shape[0], -1)
    if conv.bias is None:
        return g
    # The bias is added along the output's last axis (`_intercept` requires it).
    return jnp.concatenate([g, delta.reshape(delta.shape[0], -1, delta.shape[-1]).sum(1)], axis=1)


def _layer_factors(fn, leaves, state, x, structure: Structure, chunk: int, norms: bool = False):
    """Layer inputs A_l (N, d_in) and sensitivities Delta_l (N, C, d_out) of every Dense layer, and
    the per-sample gradients (N, C, P_l) of every convolution, or their squared norms (N, C) if `norms`."""
    n_dense = len(structure.layers)

    def one(x_i):
        zeros = [jnp.zeros((1, layer.d_out), leaves[layer.weight].dtype) for layer in structure.layers]
        zeros += [jnp.zeros(conv.out_shape, leaves[conv.weight].dtype) for conv in structure.convs]

        def f(perturbations):
            out, inputs = perturbed_call(fn, leaves, (state, x_i[None]), structure, perturbations)
            return out[0], inputs

        out, vjp, inputs = jax.vjp(f, zeros, has_aux=True)
        (deltas,) = jax.vmap(vjp)(jnp.eye(out.shape[0], dtype=out.dtype))
        convs = [
            _conv_gradient(conv, a, delta)
            for conv, a, delta in zip(structure.convs, inputs[n_dense:], deltas[n_dense:], strict=True)
        ]
        if norms:
            convs = [jnp.sum(g * g, axis=1) for g in convs]
        return [a[0] for a in inputs[:n_dense]], [d[:, 0] for d in deltas[:n_dense]], convs

    return _map(one, x, chunk, structure)


def kernel(apply: Callable, params, state, x: jax.Array, chunk: int, path: str = "auto"):
    """K = J J^T of shape (N C, N C), sample-major; see the module docstring for the paths."""
    fn, leaves = _flat(apply, params)
    structure = _structure(fn, leaves, state, x, path)
    n = x.shape[0]
    out = jax.eval_shape(fn, leaves, state, x[:1])
    rows = n * out.shape[1]
    large = [
        conv for conv in structure.convs if rows * _size(leaves, conv) * out.dtype.itemsize > BLOCK_BYTES
    ]
    structure = structure.generic(large)
    k = jnp.zeros((rows, rows), out.dtype)
    if structure.layers or structure.convs:
        inputs, deltas, convs = _layer_factors(fn, leaves, state, x, structure, chunk)
        for layer, a, delta in zip(structure.layers, inputs, deltas, strict=True):
            gram = jnp.matmul(a, a.T, precision=_HIGHEST) + (layer.bias is not None)
            d = delta.reshape(rows, -1)
            dd = jnp.matmul(d, d.T, precision=_HIGHEST).reshape(n, out.shape[1], n, out.shape[1])
            k += (dd * gram[:, None, :, None]).reshape(rows, rows)
        for g in convs:
            g = g.reshape(rows, -1)
            k += jnp.matmul(g, g.T, precision=_HIGHEST)
    for block in _blocks(leaves, structure.rest, rows):
        j = _block_jacobian(fn, leaves, state, x, structure, block, chunk).reshape(rows, -1)
        k += jnp.matmul(j, j.T, precision=_HIGHEST)
    return k


def diagonal(apply: Callable, params, state, x: jax.Array, chunk: int, path: str = "auto"):
    """diag K of length N C: squared norm of the gradient of every (sample, output)."""
    fn, leaves = _flat(apply, params)
    structure = _structure(fn, leaves, state, x, path)
    out = jax.eval_shape(fn, leaves, state, x[:1])
    d = jnp.zeros((x.shape[0], out.shape[1]), out.dtype)
    if structure.layers or structure.convs:
        inputs, deltas, convs = _layer_factors(fn, leaves, state, x, structure, chunk, norms=True)
        for layer, a, delta in zip(structure.layers, inputs, deltas, strict=True):
            norms = jnp.sum(a * a, axis=1) + (layer.bias is not None)
            d += norms[:, None] * jnp.sum(delta * delta, axis=2)
        d += sum(convs, jnp.zeros_like(d))
    for block in _blocks(leaves, structure.rest, x.shape[0] * out.shape[1]):
        j = _block_jacobian(fn, leaves, state, x, structure, block, chunk)
        d += jnp.sum(j * j, axis=2)
    return d.reshape(-1)


def _size(leaves, conv: ConvLayer) -> int:
    """Parameters of a convolution: kernel and bias."""
    return leaves[conv.weight].size + (0 if conv.bias is None else leaves[conv.bias].size)


def _dense_columns(layer, offsets: np.ndarray) -> np.ndarray:
    """Flat parameter indices (d_in [+ 1 for the bias], d_out) of a Dense layer's abar (x) delta."""
    a, p = np.meshgrid(np.arange(layer.d_in), np.arange(layer.d_out), indexing="ij")
    weight = offsets[layer.weight] + (p * layer.d_in + a if layer.transposed else a * layer.d_out + p)
    if layer.bias is None:
        return weight
    return np.concatenate([weight, offsets[layer.bias] + np.arange(layer.d_out)[None]])


def _block_columns(leaves, block: _Block, offsets: np.ndarray) -> np.ndarray:
    """Flat parameter indices of the columns of `_block_jacobian(..., block, ...)`."""
    columns = []
    for i, a, b in block:
        if leaves[i].ndim == 0:
            columns.append(offsets[i : i + 1])
            continue
        row = leaves[i].size // leaves[i].shape[0]
        columns.append(offsets[i] + np.arange(a * row, b * row))
    return np.concatenate(columns)


def parameter_gram(apply: Callable, params, state, x: jax.Array, targets, chunk: int):
    """(J^T J, J^T Y) in float64 NumPy: the P x P Gram of the parameter gradients (module docstring)
    and the gradients contracted with targets Y (N, C); columns in `ravel_pytree`'s order.

    Per pair of Dense layers and per unit p of the first, one matrix product
    abar_l^T [abar_m (x) M_{lm}[:, p, :]] of (d_l + 1) x N by N x (d_m + 1) n_m; a layer's block with
    itself only for units q >= p, the rest by symmetry. Samples go in chunks whose host products fit
    `GRAM_BYTES`. The factors (a, delta, generic Jacobian blocks) are computed in JAX's precision,
    their products summed in float64.
    """
    fn, leaves = _flat(apply, params)
    structure = _structure(fn, leaves, state, x, "auto")
    structure = structure.generic(structure.convs)
    n, n_out = x.shape[0], jax.eval_shape(fn, leaves, state, x[:1]).shape[1]
    offsets = np.cumsum([0] + [leaf.size for leaf in leaves])
    dense = [_dense_columns(layer, offsets) for layer in structure.layers]
    rest_size = sum(leaves[i].size for i in structure.rest)
    per_sample = max([c.size for c in dense] + [n_out * rest_size, 1])
    step = max(1, GRAM_BYTES // (8 * per_sample))
    blocks = _blocks(leaves, structure.rest, step * n_out)
    rest = np.concatenate([_block_columns(leaves, b, offsets) for b in blocks]) if blocks else None

    @jax.jit
    def factors(leaves, state, x):
        inputs, deltas, _ = _layer_factors(fn, leaves, state, x, structure, chunk) if dense else ([], [], [])
        jacobian = [_block_jacobian(fn, leaves, state, x, structure, b, chunk) for b in blocks]
        return inputs, deltas, jnp.concatenate(jacobian, axis=2) if blocks else None

    # Accumulated blocks (i, j) of Dense layers i <= j, shaped (d_i + 1, n_i, d_j + 1, n_j); -1 is
    # the rest, (-1, i) shaped (R, d_i + 1, n_i).
    pairs = {
        (i, j): np.zeros(dense[i].shape + dense[j].shape)
        for i in range(len(dense))
        for j in range(i, len(dense))
    }
    if blocks:
        pairs |= {(-1, i): np.zeros((rest.size, *c.shape)) for i, c in enumerate(dense)}
        pairs[(-1, -1)] = np.zeros((rest.size, rest.size))
    rhs = np.zeros(offsets[-1])
    for start in range(0, n, step):
        inputs, deltas, jacobian = jax.tree.map(
            lambda a: np.asarray(a, np.float64), factors(leaves, state, x[start : start + step])
        )
        y = np.asarray(targets[start : start + step], np.float64)
        rows = y.shape[0]
        abar = [
            np.concatenate([a, np.ones((rows, 1))], axis=1) if layer.bias is not None else a
            for layer, a in zip(structure.layers, inputs, strict=True)
        ]
        for i, (a, delta) in enumerate(zip(abar, deltas, strict=True)):
            rhs[dense[i]] += a.T @ np.einsum("ic,icp->ip", y, delta)
            for j in range(i, len(abar)):
                mixed = np.einsum("icp,icq->ipq", delta, deltas[j])
                for p in range(delta.shape[2]):
                    q = p if i == j else 0
                    w = (abar[j][:, :, None] * mixed[:, p, None, q:]).reshape(rows, -1)
                    pairs[i, j][:, p, :, q:] += (a.T @ w).reshape(a.shape[1], abar[j].shape[1], -1)
            if jacobian is not None:
                cross = np.einsum("icr,icp->irp", jacobian, delta)
                pairs[-1, i] += np.einsum("ia,irp->rap", a, cross)
        if jacobian is not None:
            flat = jacobian.reshape(rows * n_out, -1)
            rhs[rest] += flat.T @ y.reshape(-1)
            pairs[-1, -1] += flat.T @ flat

    gram = np.zeros((offsets[-1], offsets[-1]))
    columns = {-1: rest, **{i: c.reshape(-1) for i, c in enumerate(dense)}}
    for (i, j), block in pairs.items():
        if i == j >= 0:  # units q < p from (q, p)
            below = np.arange(block.shape[1])[:, None] > np.arange(block.shape[1])
            block = np.where(below[None, :, None, :], block.transpose(2, 3, 0, 1), block)
        block = block.reshape(columns[i].size, columns[j].size)
        gram[np.ix_(columns[i], columns[j])] = block
        if i != j:
            gram[np.ix_(columns[j], columns[i])] = block.T
    return gram, rhs
