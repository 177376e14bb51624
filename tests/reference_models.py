"""Small models for tests, and the independent float64 reference kernel (dense J by `jax.jacrev`)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

N_IN, N_OUT = 5, 3


class ReluMLP(nnx.Module):
    def __init__(self, rngs, width=12, dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.layers = nnx.List(
            [nnx.Linear(N_IN, width, **kw), nnx.Linear(width, width, **kw), nnx.Linear(width, N_OUT, **kw)]
        )

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class ResidualLayerNormMLP(nnx.Module):
    def __init__(self, rngs, width=12, dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.inp = nnx.Linear(N_IN, width, **kw)
        self.hidden = nnx.Linear(width, width, **kw)
        self.norm = nnx.LayerNorm(width, rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.out = nnx.Linear(width, N_OUT, **kw)

    def __call__(self, x):
        h = jnp.tanh(self.inp(x))
        h = h + jax.nn.relu(self.hidden(self.norm(h)))
        return self.out(h)


class SmallCNN(nnx.Module):
    """Inputs (N, 6, 6, 1)."""

    def __init__(self, rngs, width=4, dtype=jnp.float32):
        kw = dict(rngs=rngs, param_dtype=dtype, dtype=dtype)
        self.conv1 = nnx.Conv(1, width, (3, 3), **kw)
        self.conv2 = nnx.Conv(width, width, (3, 3), strides=2, **kw)
        self.dense = nnx.Linear(3 * 3 * width, N_OUT, **kw)

    def __call__(self, x):
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        return self.dense(h.reshape(h.shape[0], -1))


class LinenMLP(nn.Module):
    width: int = 12

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(N_OUT)(nn.gelu(nn.Dense(self.width)(x)))


NNX_MODELS = {"relu_mlp": ReluMLP, "residual_layernorm": ResidualLayerNormMLP, "cnn": SmallCNN}


def inputs(name, seed, n, dtype):
    shape = (n, 6, 6, 1) if name == "cnn" else (n, N_IN)
    return jax.random.normal(jax.random.key(100 + seed), shape, dtype)


def reference_kernel(apply, params, x):
    """K = J J^T in float64 numpy, J from `jax.jacrev` of the flattened outputs."""
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x64 = jnp.asarray(x, jnp.float64)
    jac = jax.jacrev(lambda p: apply(p, x64).reshape(-1))(params64)
    rows = np.concatenate([np.asarray(j).reshape(j.shape[0], -1) for j in jax.tree.leaves(jac)], 1)
    return rows @ rows.T


def nnx_reference(module, x):
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    rest64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), rest)
    return reference_kernel(lambda p, x: nnx.merge(graphdef, p, rest64)(x), params, x)


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.max(np.abs(got - want)) / np.max(np.abs(want))
