"""Models of the study, as Flax nnx modules called as `model(x) -> (N, C)` logits.

* `MLP`: `depth` Dense layers (depth - 1 hidden layers of `width` units, ReLU), LeCun-normal weights
  (variance 1 / fan_in; LeCun et al., "Efficient BackProp", 1998) and zero biases: the standard
  parameterisation, under which the NTK scale grows with the width.
* `CNN`: three 3x3 convolutions of 32 filters (ReLU, 2x2 average pooling after each), a 64-unit Dense
  layer and the output layer, He-uniform weights (He et al., "Delving deep into rectifiers", 2015) and
  zero biases: the small network of the noisy-copy experiment.

Either takes another weight initialiser of `INITS` by name: the noisy-copy experiment's dense network
is Xavier-uniform (variance 2 / (fan_in + fan_out); Glorot & Bengio 2010).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ntkspec._errors import bad_value
from ntkspec._typing import Key

MODELS = ("mlp", "cnn")
#: Weight initialisers by name (biases start at zero).
INITS = {
    "lecun_normal": nnx.initializers.lecun_normal,
    "xavier_uniform": nnx.initializers.xavier_uniform,
    "he_uniform": nnx.initializers.he_uniform,
}


def _initializer(init: str):
    if init not in INITS:
        raise bad_value("init", repr(init), f"one of {tuple(INITS)}")
    return INITS[init]()


def _positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_value(name, repr(value), "a positive integer")


class MLP(nnx.Module):
    """ReLU MLP with `depth` Dense layers: in_features -> width -> ... -> width -> num_classes."""

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        init: str = "lecun_normal",
        param_dtype: jnp.dtype = jnp.float32,
    ):
        for name, value in (("in_features", in_features), ("width", width), ("depth", depth)):
            _positive(name, value)
        _positive("num_classes", num_classes)
        sizes = [in_features] + [width] * (depth - 1) + [num_classes]
        self.init = init
        kernel_init = _initializer(init)
        self.layers = nnx.List(
            [
                nnx.Linear(
                    fan_in,
                    fan_out,
                    kernel_init=kernel_init,
                    bias_init=nnx.initializers.zeros_init(),
                    param_dtype=param_dtype,
                    dtype=param_dtype,
                    rngs=rngs,
                )
                for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True)
            ]
        )

    @property
    def widths(self) -> tuple[int, ...]:
        """(d_in, n_1, ..., n_{L-1}): the input size, then the hidden widths (`ntkspec.infinite`'s)."""
        return tuple(layer.in_features for layer in self.layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    """Three conv(3x3, 32) + ReLU + 2x2 average-pool blocks, Dense(64) + ReLU, Dense(num_classes)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        filters: int = 32,
        hidden: int = 64,
        init: str = "he_uniform",
        param_dtype: jnp.dtype = jnp.float32,
    ):
        if len(image_shape) != 3:
            raise bad_value("image_shape", repr(image_shape), "(height, width, channels)")
        _positive("num_classes", num_classes)
        height, width, channels = image_shape
        self.init = init
        layer = dict(
            kernel_init=_initializer(init),
            bias_init=nnx.initializers.zeros_init(),
            param_dtype=param_dtype,
            dtype=param_dtype,
            rngs=rngs,
        )
        self.convs = nnx.List(
            [nnx.Conv(c, filters, kernel_size=(3, 3), **layer) for c in (channels, filters, filters)]
        )
        for _ in range(3):
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise bad_value("image_shape", repr(image_shape), "images of at least 8x8 pixels")
        self.dense = nnx.Linear(height * width * filters, hidden, **layer)
        self.out = nnx.Linear(hidden, num_classes, **layer)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv in self.convs:
            x = nnx.avg_pool(jax.nn.relu(conv(x)), (2, 2), strides=(2, 2))
        x = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.out(x)


def build(
    kind: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    key: Key,
    *,
    width: int = 0,
    depth: int = 0,
    init: str | None = None,
    param_dtype: jnp.dtype = jnp.float32,
) -> nnx.Module:
    """Build model `kind` ("mlp" or "cnn") for inputs of `input_shape` (one sample) from `key`.

    An MLP flattens nothing itself: pass `input_shape = (features,)`. `width` and `depth` apply to the
    MLP only. `init` names a weight initialiser of `INITS` (None: the model's own).
    """
    rngs = nnx.Rngs(params=key)
    own = {} if init is None else {"init": init}
    if kind == "mlp":
        features = 1
        for d in input_shape:
            features *= d
        return MLP(features, width, depth, num_classes, rngs=rngs, param_dtype=param_dtype, **own)
    if kind == "cnn":
        return CNN(tuple(input_shape), num_classes, rngs=rngs, param_dtype=param_dtype, **own)
    raise bad_value("model", repr(kind), f"one of {MODELS}")
