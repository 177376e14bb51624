"""Small models for the tests, written independently of `ntkspec.models` on purpose.

They are the independent check of the operator (tests/test_operator.py, test_spectrum.py,
test_sharding.py): an nnx ReLU MLP with default initialisers, a residual MLP with LayerNorm (tanh,
non-Dense parameters), a small CNN and a linen MLP (gelu), compared with the float64 reference kernel
`ntkspec._testing.nnx_reference` (dense J by `jax.jacrev`). Models for anything else are built with
`ntkspec.models.build`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
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
