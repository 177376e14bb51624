"""The ensemble axis: one network's computation mapped over networks stacked on axis 0.

`train.train_ensemble` stacks the parameters, optimizer states and data of its networks on a
leading axis and maps one network's computation over it. The rule is `jax.vmap`. On the CPU a
network that convolves is the exception: `vmap` turns a convolution whose kernel is batched into a
grouped convolution (`feature_group_count` = the number of networks), which XLA:CPU runs several
times slower than the networks' convolutions one by one (`benchmarks/conv_loop.py`, the noise
experiment's CNN, an epoch of 3 networks: 3.9 times as long vmapped as unrolled), so there one
network's computation is traced once per network, side by side in the same program.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ntkspec._intercept import convolves


def over_networks(fn: Callable, unrolled: bool = False) -> Callable:
    """`fn` of one network mapped over axis 0 of every argument (a pytree each): `jax.vmap(fn)`, or,
    `unrolled`, fn called on each network's slice and the results stacked (the count is static)."""
    if not unrolled:
        return jax.vmap(fn)

    def mapped(*args):
        count = jax.tree.leaves(args)[0].shape[0]
        outs = [fn(*jax.tree.map(lambda a, e=e: a[e], args)) for e in range(count)]
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

    return mapped


def convolves_on_cpu(graphdef, params, x) -> bool:
    """Whether the network (`nnx.split` parameters stacked on axis 0, inputs `x` likewise) convolves,
    on the CPU: then its ensemble is unrolled (`over_networks`) and its epochs dispatched one by one
    (`train._epochs`)."""

    one = jax.tree.map(lambda a: a[0], params)
    jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(x[0, :1]))(one).jaxpr
    platform = next(iter(jax.tree.leaves(params)[0].devices())).platform
    return platform == "cpu" and convolves(jaxpr)
