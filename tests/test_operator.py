"""NTKOperator against the independent float64 reference: dense, matvec, diagonal, normalized, spectrum."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference_models import NNX_MODELS, LinenMLP, inputs

import ntkspec
from ntkspec._testing import nnx_reference, reference_kernel, relative_error

TOLERANCE = {jnp.float64: 1e-8, jnp.float32: 1e-4}
N = 5


@pytest.fixture(
    scope="module",
    params=[
        (name, seed, dtype)
        for name in NNX_MODELS
        for seed, dtype in ((0, jnp.float64), (1, jnp.float64), (0, jnp.float32))
    ],
    ids=lambda p: f"{p[0]}-seed{p[1]}-{jnp.dtype(p[2]).name}",
)
def case(request):
    name, seed, dtype = request.param
    module = NNX_MODELS[name](nnx.Rngs(seed), dtype=dtype)
    x = inputs(name, seed, N, dtype)
    # chunk_size 2 on N = 5 exercises chunking with padding.
    return ntkspec.ntk(module, x, chunk_size=2, probe_block=3), nnx_reference(module, x), dtype


def test_dense(case):
    op, k, dtype = case
    assert op.shape == k.shape and op.dtype == dtype
    assert relative_error(op.dense(), k) < TOLERANCE[dtype]
    assert relative_error(op.dense("jacobian"), k) < TOLERANCE[dtype]


def test_matvec(case):
    op, k, dtype = case
    v = np.random.default_rng(0).normal(size=(k.shape[0], 7))
    assert relative_error(op.matvec(jnp.asarray(v, dtype)), k @ v) < TOLERANCE[dtype]
    assert relative_error(op.matvec(jnp.asarray(v[:, 0], dtype)), k @ v[:, 0]) < TOLERANCE[dtype]


def test_diagonal(case):
    op, k, dtype = case
    assert relative_error(op.diagonal(), np.diag(k)) < TOLERANCE[dtype]
    assert relative_error(op.diagonal("jacobian"), np.diag(k)) < TOLERANCE[dtype]


def test_normalized(case):
    op, k, dtype = case
    s = 1 / np.sqrt(np.diag(k))
    cosine = s[:, None] * k * s[None, :]
    v = np.random.default_rng(1).normal(size=(k.shape[0], 2))
    normalized = op.normalized()
    assert normalized.shape == op.shape
    assert relative_error(normalized.dense(), cosine) < TOLERANCE[dtype]
    assert relative_error(normalized.matvec(jnp.asarray(v, dtype)), cosine @ v) < TOLERANCE[dtype]
    np.testing.assert_allclose(normalized.diagonal(), 1.0, rtol=TOLERANCE[dtype])
    assert normalized.normalized() is normalized


def test_exact_spectrum(case):
    op, k, dtype = case
    result = ntkspec.spectrum(op, method="exact")
    lam = np.linalg.eigh(k)[0][::-1]
    p = np.clip(lam, 0, None) / np.clip(lam, 0, None).sum()
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    assert abs(result.trace - np.trace(k)) / np.trace(k) < TOLERANCE[dtype]
    assert abs(result.entropy - entropy) / entropy < TOLERANCE[dtype]
    assert abs(result.effective_rank - np.exp(entropy)) / np.exp(entropy) < TOLERANCE[dtype]
    assert relative_error(result.eigenvalues, np.clip(lam, 0, None)) < TOLERANCE[dtype]
    assert np.all(np.diff(result.eigenvalues) <= 0)
    assert result.min_raw_eigenvalue <= 0
    assert result.mean_diagonal == pytest.approx(result.trace / k.shape[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_linen_and_pure_function(seed):
    module = LinenMLP()
    x = jax.random.normal(jax.random.key(seed), (4, 5))
    variables = jax.tree.map(lambda a: a.astype(jnp.float64), module.init(jax.random.key(seed), x))
    op = ntkspec.ntk(module.apply, variables, x)
    k = reference_kernel(module.apply, variables, x)
    assert relative_error(op.dense(), k) < 1e-8
    assert relative_error(op.diagonal(), np.diag(k)) < 1e-8

    def apply(params, x):  # a plain function with a tied weight: generic path for it
        h = jnp.tanh(x @ params["w"])
        return h @ params["w"].T[:, :3] + params["b"]

    params = {"w": jax.random.normal(jax.random.key(seed), (5, 5)), "b": jnp.zeros(3)}
    op = ntkspec.ntk(apply, params, x)
    k = reference_kernel(apply, params, x)
    assert relative_error(op.dense(), k) < 1e-8
    assert relative_error(op.matvec(jnp.eye(k.shape[0])), k) < 1e-8


def test_structured_layers_are_found():
    from ntkspec._intercept import find_structure
    from ntkspec.exact import _flat

    for name, expected_layers, expected_convs, expected_rest in [
        ("relu_mlp", 3, 0, 0),
        ("cnn", 1, 2, 0),
        ("residual_layernorm", 3, 0, 2),
    ]:
        module = NNX_MODELS[name](nnx.Rngs(0))
        op = ntkspec.ntk(module, inputs(name, 0, 2, jnp.float32))
        fn, leaves = _flat(op.apply, op.params)
        structure = find_structure(fn, leaves, op.state, op.x[:1])
        assert len(structure.layers) == expected_layers, name
        assert len(structure.convs) == expected_convs, name
        assert len(structure.rest) == expected_rest, name
        assert all(layer.bias is not None for layer in structure.layers + structure.convs)


def _conv(spec, dilation=(1, 1), groups=1, bias=True, bias_shape=None):
    """A one-convolution network in `lax.conv_general_dilated`'s terms, then tanh and a Dense readout."""
    lhs, rhs, out = spec

    def apply(params, x):
        z = jax.lax.conv_general_dilated(
            x,
            params["w"],
            window_strides=(2, 1),
            padding=((1, 0), (2, 1)),
            lhs_dilation=dilation,
            rhs_dilation=(1, 2),
            dimension_numbers=spec,
            feature_group_count=groups,
        )
        if bias:
            z = z + params["b"].reshape(bias_shape or (1,) * (z.ndim - 1) + (-1,))
        return jnp.tanh(z).reshape(x.shape[0], -1) @ params["v"]

    shapes = {"N": 3, "C": 4, "H": 7, "W": 6}
    x_shape = tuple(shapes[axis] for axis in lhs)
    w_shape = tuple({"O": 6, "I": 4 // groups, "H": 3, "W": 2}[axis] for axis in rhs)
    keys = jax.random.split(jax.random.key(len(lhs + rhs + out) + groups), 4)
    params = {"w": jax.random.normal(keys[0], w_shape, jnp.float64) / 3}
    if bias:
        params["b"] = jax.random.normal(keys[1], (6,), jnp.float64)
    x = jax.random.normal(keys[2], x_shape, jnp.float64)
    z = jax.eval_shape(
        lambda p, x: jax.lax.conv_general_dilated(
            x, p["w"], (2, 1), ((1, 0), (2, 1)), dilation, (1, 2), spec, groups
        ),
        params,
        x,
    )
    params["v"] = jax.random.normal(keys[3], (z.size // x.shape[0], 3), jnp.float64) / 5
    return apply, params, x


@pytest.mark.parametrize(
    "spec, dilation, groups, bias, bias_shape, convs",
    [
        (("NHWC", "HWIO", "NHWC"), (1, 1), 1, True, None, 1),
        (("NCHW", "OIHW", "NCHW"), (1, 1), 1, True, (1, -1, 1, 1), 1),  # bias not on the last axis
        (("NHWC", "OIHW", "NCHW"), (2, 1), 1, False, None, 1),  # input dilation, mixed layouts
        (("NHWC", "HWIO", "NHWC"), (1, 1), 2, True, None, 0),  # grouped: generic
    ],
    ids=["nhwc", "nchw-bias-generic", "dilated-mixed-biasless", "grouped"],
)
def test_convolutions_of_any_geometry_match_the_reference(spec, dilation, groups, bias, bias_shape, convs):
    from ntkspec._intercept import find_structure
    from ntkspec.exact import _flat

    apply, params, x = _conv(spec, dilation, groups, bias, bias_shape)
    op = ntkspec.ntk(apply, params, x, chunk_size=2)
    fn, leaves = _flat(op.apply, op.params)
    structure = find_structure(fn, leaves, op.state, op.x[:1])
    assert len(structure.convs) == convs
    assert all((conv.bias is not None) == (bias and bias_shape is None) for conv in structure.convs)
    k = reference_kernel(apply, params, x)
    assert relative_error(op.dense(), k) < 1e-10
    assert relative_error(op.diagonal(), np.diag(k)) < 1e-10


def test_a_convolution_too_large_for_a_block_takes_the_generic_path(monkeypatch):
    from ntkspec import exact

    module = NNX_MODELS["cnn"](nnx.Rngs(0), dtype=jnp.float64)
    x = inputs("cnn", 0, 3, jnp.float64)
    monkeypatch.setattr(exact, "BLOCK_BYTES", 9 * 8 * 100)  # conv2's 148 parameters are too many
    assert relative_error(ntkspec.ntk(module, x).dense(), nnx_reference(module, x)) < 1e-10


def _jacobian(op) -> np.ndarray:
    """Dense float64 J (N·C, P) by `jax.jacrev`, columns in `ravel_pytree`'s order."""
    from jax.flatten_util import ravel_pytree

    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), op.params)
    flat, unravel = ravel_pytree(params)
    x = jnp.asarray(op.x, jnp.float64)
    return np.asarray(jax.jacrev(lambda w: op.apply(unravel(w), op.state, x).reshape(-1))(flat))


def _parameter_gram_matches(op, chunk: int, tolerance: float) -> None:
    from ntkspec import exact

    j = _jacobian(op)
    y = np.random.default_rng(0).normal(size=(op.n_samples, op.n_outputs))
    gram, rhs = exact.parameter_gram(op.apply, op.params, op.state, op.x, y, chunk)
    assert relative_error(gram, j.T @ j) < tolerance
    assert relative_error(rhs, j.T @ y.reshape(-1)) < tolerance


@pytest.mark.parametrize("name", list(NNX_MODELS))
def test_parameter_gram(name, monkeypatch):
    from ntkspec import exact

    module = NNX_MODELS[name](nnx.Rngs(0), dtype=jnp.float64)
    op = ntkspec.ntk(module, inputs(name, 0, N, jnp.float64))
    monkeypatch.setattr(exact, "GRAM_BYTES", 3000)  # a few samples per host chunk
    _parameter_gram_matches(op, 2, 1e-10)


def test_parameter_gram_of_transposed_biasless_and_scalar_parameters():
    def apply(params, x):  # a square weight stored (d_out, d_in), a layer without bias, a scale
        h = jax.nn.relu(jnp.einsum("ni,oi->no", x, params["w"]) + params["b"])
        return (jnp.tanh(h @ params["v"]) * params["s"]) @ params["u"]

    keys = jax.random.split(jax.random.key(0), 6)
    shapes = {"w": (5, 5), "b": (5,), "v": (5, 4), "s": (), "u": (4, 3)}
    params = {
        name: jax.random.normal(k, shape, jnp.float64)
        for k, (name, shape) in zip(keys[:5], shapes.items(), strict=True)
    }
    op = ntkspec.ntk(apply, params, jax.random.normal(keys[-1], (6, 5), jnp.float64))
    _parameter_gram_matches(op, 4, 1e-12)


def test_operator_works_under_jit():
    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0))
    op = ntkspec.ntk(module, inputs("relu_mlp", 0, 3, jnp.float32))
    v = jnp.ones(op.shape[0], jnp.float32)
    np.testing.assert_allclose(jax.jit(lambda o, v: o.matvec(v))(op, v), op.matvec(v), rtol=1e-6)


def test_products_run_at_highest_precision_unless_the_user_chose_one():
    """On GPUs JAX's default float32 products are TF32 (K 2.6e-3 off at w = 1024 on an H200): the
    operator's programs ask for "highest", and keep a precision the user set."""
    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0))
    op = ntkspec.ntk(module, inputs("relu_mlp", 0, 3, jnp.float32))
    v = jnp.ones((op.shape[0], 2), jnp.float32)

    def precisions():
        text = str(jax.make_jaxpr(lambda o, v: o.matvec(v))(op, v))
        return text.count("dot_general["), text.count("precision=(Precision.HIGHEST, Precision.HIGHEST)")

    products, highest = precisions()
    assert products > 0 and highest == products
    with jax.default_matmul_precision("bfloat16"):
        assert precisions() == (products, 0)


def test_jacobian_blocks_split_large_leaves(monkeypatch):
    from ntkspec import exact

    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0), dtype=jnp.float64)
    x = inputs("relu_mlp", 0, 3, jnp.float64)
    monkeypatch.setattr(exact, "BLOCK_BYTES", 9 * 8 * 20)  # 20 parameters per block
    op = ntkspec.ntk(module, x)
    assert relative_error(op.dense("jacobian"), nnx_reference(module, x)) < 1e-8


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda m, x: (m, x.at[0, 0].set(jnp.nan)), r"`x`: got 1 non-finite"),
        (lambda m, x: (m, x[:0]), r"`x`: got an array of shape \(0, 5\).*non-empty batch"),
        (lambda m, x: (m, x[:, :2]), r"`model`: got a model that fails on x"),
        (
            lambda m, x: (lambda p, x: m(x)[..., None], nnx.state(m, nnx.Param), x),
            r"`model output`: got shape \(3, 3, 1\), expected shape \(N, C\) = \(3, C\)",
        ),
        (
            lambda m, x: (lambda p, x: m(x)[0], nnx.state(m, nnx.Param), x),
            r"`model output`: got shape \(3,\)",
        ),
        (
            lambda m, x: (lambda p, x: (m(x), m(x)), nnx.state(m, nnx.Param), x),
            r"`model output`: got a tuple",
        ),
        (lambda m, x: (42, x), r"`model`: got an object of type int"),
        (lambda m, x: (m, x, x), r"`args`: got 2 positional"),
        (lambda m, x: (m, jnp.ones((3, 5), jnp.int32)), r"`x`: .*floating-point inputs"),
    ],
)
def test_bad_input(bad, match):
    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0))
    x = inputs("relu_mlp", 0, 3, jnp.float32)
    with pytest.raises(ValueError, match=match):
        ntkspec.ntk(*bad(module, x))


def test_bad_params_and_vectors():
    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0))
    x = inputs("relu_mlp", 0, 3, jnp.float32)
    graphdef, params = nnx.split(module, nnx.Param)
    params = jax.tree.map(lambda a: a.at[..., 0].set(jnp.inf), params)
    with pytest.raises(ValueError, match=r"`params.*non-finite"):
        ntkspec.ntk(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
    op = ntkspec.ntk(module, x)
    with pytest.raises(ValueError, match=r"`v`: got an array of shape \(4,\).*expected shape \(9,\)"):
        op.matvec(jnp.ones(4))
    with pytest.raises(ValueError, match=r"`path`: got 'fast'"):
        op.dense("fast")
    with pytest.raises(ValueError, match=r"`method`: got 'magic'"):
        ntkspec.spectrum(op, method="magic")
    assert isinstance(nn.Dense(3), nn.Module)  # linen modules go through module.apply
