"""Exact kernels: K = J J^T and diag K, without ever holding all of J.

Structured path (Dense layers, found in the model's jaxpr by `ntkspec._intercept`): for a layer
z = a W + b with per-sample input a_i and sensitivities delta_{i,c} = d f_{i,c} / d z_i,

    K[(i,c),(j,c')] = sum_l (a_{l,i} . a_{l,j} + 1) (delta_{l,i,c} . delta_{l,j,c'}),
    diag K[(i,c)]   = sum_l (|a_{l,i}|^2 + 1) |delta_{l,i,c}|^2

("+1" only where the layer's bias was recognised). One reverse pass per output class gives every
delta; the cost is C backward passes plus sum_l (N C)^2 d_l multiply-adds, against (N C)^2 P for the
Jacobian contraction. (Novak, Sohl-Dickstein & Schoenholz, "Fast finite width neural tangent
kernel", ICML 2022; the diagonal is Goodfellow, "Efficient per-example gradient computations", 2015.)

Generic path (every other parameter): per-sample Jacobians of blocks of parameters, each block sized
so that its (N C) x P_block Jacobian fits `BLOCK_BYTES`, contracted and summed. Large leaves are split
into row blocks.

Both paths assume the model treats samples independently (no batch statistics across the batch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from ntkspec._errors import bad_value
from ntkspec._intercept import Structure, find_structure, perturbed_call

PATHS = ("auto", "structured", "jacobian")
BLOCK_BYTES = 256 * 2**20
_HIGHEST = jax.lax.Precision.HIGHEST

# A block is a tuple of (leaf index, first row, last row + 1) slices of parameter leaves.
_Block = tuple[tuple[int, int, int], ...]


def _flat(apply: Callable, params):
    leaves, treedef = jax.tree.flatten(params)

    def fn(leaves, state, x):
        return apply(jax.tree.unflatten(treedef, leaves), state, x)

    return fn, leaves


def _structure(fn, leaves, state, x, path: str) -> Structure:
    if path == "jacobian":
        return Structure((), tuple(range(len(leaves))))
    structure = find_structure(fn, leaves, state, x[:1])
    if path == "structured" and not structure.layers:
        raise bad_value(
            "path",
            "'structured'",
            "a model with Dense layers",
            "No Dense layer was found in this model; use path='auto'.",
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


def _block_jacobian(fn, leaves, state, x, block: _Block, chunk: int) -> jax.Array:
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

    return jax.lax.map(one, x, batch_size=chunk)


def _dense_factors(fn, leaves, state, x, structure: Structure, chunk: int):
    """Layer inputs A_l (N, d_in) and sensitivities Delta_l (N, C, d_out) of every Dense layer."""

    def one(x_i):
        zeros = [jnp.zeros((1, layer.d_out), leaves[layer.weight].dtype) for layer in structure.layers]

        def f(perturbations):
            out, inputs = perturbed_call(fn, leaves, (state, x_i[None]), structure, perturbations)
            return out[0], [a[0] for a in inputs]

        out, vjp, inputs = jax.vjp(f, zeros, has_aux=True)
        (deltas,) = jax.vmap(vjp)(jnp.eye(out.shape[0], dtype=out.dtype))
        return inputs, [d[:, 0] for d in deltas]

    return jax.lax.map(one, x, batch_size=chunk)


def kernel(apply: Callable, params, state, x: jax.Array, chunk: int, path: str = "auto"):
    """K = J J^T of shape (N C, N C), sample-major; see the module docstring for the paths."""
    fn, leaves = _flat(apply, params)
    structure = _structure(fn, leaves, state, x, path)
    n = x.shape[0]
    n_out = jax.eval_shape(fn, leaves, state, x[:1]).shape[1]
    rows = n * n_out
    dtype = jax.eval_shape(fn, leaves, state, x[:1]).dtype
    k = jnp.zeros((rows, rows), dtype)
    if structure.layers:
        inputs, deltas = _dense_factors(fn, leaves, state, x, structure, chunk)
        for layer, a, delta in zip(structure.layers, inputs, deltas, strict=True):
            gram = jnp.matmul(a, a.T, precision=_HIGHEST) + (layer.bias is not None)
            d = delta.reshape(rows, -1)
            dd = jnp.matmul(d, d.T, precision=_HIGHEST).reshape(n, n_out, n, n_out)
            k += (dd * gram[:, None, :, None]).reshape(rows, rows)
    for block in _blocks(leaves, structure.rest, rows):
        j = _block_jacobian(fn, leaves, state, x, block, chunk).reshape(rows, -1)
        k += jnp.matmul(j, j.T, precision=_HIGHEST)
    return k


def diagonal(apply: Callable, params, state, x: jax.Array, chunk: int):
    """diag K of length N C: squared norm of the gradient of every (sample, output)."""
    fn, leaves = _flat(apply, params)
    structure = _structure(fn, leaves, state, x, "auto")
    n_out = jax.eval_shape(fn, leaves, state, x[:1]).shape[1]
    d = jnp.zeros((x.shape[0], n_out), jax.eval_shape(fn, leaves, state, x[:1]).dtype)
    if structure.layers:
        inputs, deltas = _dense_factors(fn, leaves, state, x, structure, chunk)
        for layer, a, delta in zip(structure.layers, inputs, deltas, strict=True):
            norms = jnp.sum(a * a, axis=1) + (layer.bias is not None)
            d += norms[:, None] * jnp.sum(delta * delta, axis=2)
    for block in _blocks(leaves, structure.rest, x.shape[0] * n_out):
        j = _block_jacobian(fn, leaves, state, x, block, chunk)
        d += jnp.sum(j * j, axis=2)
    return d.reshape(-1)
