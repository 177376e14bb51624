"""Sharded operator on 8 simulated CPU devices (set in conftest) equals the single-device one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from reference_models import NNX_MODELS, inputs

import ntkspec
from ntkspec.sharding import make_mesh, param_spec, shard_params

RTOL = 1e-5


@pytest.fixture(scope="module")
def pair():
    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0), width=16)
    x = inputs("relu_mlp", 0, 6, jnp.float32)  # 6 samples on a data axis of 4: uneven
    mesh = make_mesh("data=4,model=2")
    return ntkspec.ntk(module, x), ntkspec.ntk(module, x, mesh=mesh), mesh


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= RTOL * np.max(np.abs(b))


def test_devices_and_mesh():
    assert len(jax.devices()) == 8
    assert dict(make_mesh().shape) == {"data": 8, "model": 1}
    assert dict(make_mesh("model=2").shape) == {"data": 4, "model": 2}
    with pytest.raises(ValueError, match=r"`mesh`: got 'data=16'.*at most 8"):
        make_mesh("data=16")
    with pytest.raises(ValueError, match=r"`mesh`: got 'gpu=2'"):
        make_mesh("gpu=2")


def test_matches_single_device(pair):
    single, sharded, _ = pair
    v = jax.random.normal(jax.random.key(1), (single.shape[0], 5), jnp.float32)
    _close(sharded.matvec(v), single.matvec(v))
    _close(sharded.diagonal(), single.diagonal())
    _close(sharded.dense(), single.dense())
    _close(sharded.normalized().matvec(v), single.normalized().matvec(v))
    a, b = ntkspec.spectrum(sharded), ntkspec.spectrum(single)
    assert a.entropy == pytest.approx(b.entropy, rel=RTOL)
    assert a.trace == pytest.approx(b.trace, rel=RTOL)


def test_arrays_are_sharded(pair):
    _, sharded, mesh = pair
    hidden = sharded.params["layers"][1]["kernel"]
    assert hidden.sharding.spec == P(None, "model")
    assert len(hidden.sharding.device_set) == 8
    head_bias = sharded.params["layers"][2]["bias"]  # 3 outputs: too small to split, replicated
    assert head_bias.sharding.spec == P()


def test_compiled_matvec_has_collectives(pair):
    from ntkspec.operator import _matmat

    _, sharded, _ = pair
    v = jnp.ones((sharded.shape[0], 2), jnp.float32)
    hlo = _matmat.lower(sharded, v).compile().as_text()
    assert "all-reduce" in hlo  # J^T v summed over the data shards
    # No parameter is gathered whole: the largest all-gather is smaller than the hidden weight.
    hidden = sharded.params["layers"][1]["kernel"]
    assert f"f32[{hidden.shape[0]},{hidden.shape[1]}]{{1,0}} all-gather" not in hlo


def test_uneven_width_gets_a_clear_error():
    mesh = make_mesh("data=1,model=8")
    assert param_spec((784, 300), mesh) == P("model", None)
    with pytest.raises(
        ValueError,
        match=r"shape \(300, 300\).*divisible by the model axis size 8"
        r".*multiples of 8",
    ):
        shard_params({"w": jnp.zeros((300, 300))}, mesh)


def test_dense_kernel_rows_on_data():
    # K's rows are split on "data" when they divide evenly (8 samples x 3 outputs over 4), so the
    # exact kernel's memory per device falls with the devices; uneven rows stay replicated.
    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0), width=16)
    x = inputs("relu_mlp", 0, 8, jnp.float32)
    k = ntkspec.ntk(module, x, mesh=make_mesh("data=4,model=2")).dense()
    assert k.sharding.spec == P("data")
    assert k.addressable_shards[0].data.shape == (6, 24)
    _close(k, ntkspec.ntk(module, x).dense())


def test_training_and_spectra_match_single_device():
    from ntkspec import data, models
    from ntkspec.train import make_optimizer, train

    split = data.split(data.load("digits"), 30, 14, jax.random.key(0), n_test=50)  # 14 on data=4: uneven
    mesh = make_mesh("data=4,model=2")
    results = {}
    for name, m in (("single", None), ("sharded", mesh)):
        records = []
        model = models.build("mlp", (64,), 10, jax.random.key(1), width=16, depth=3)
        train(
            model,
            split,
            make_optimizer("adam", 1e-2),
            [0, 3, 6],
            jax.random.key(2),
            top_k=5,
            method="stochastic",
            recorder=records.append,
            mesh=m,
        )
        results[name] = records
    for a, b in zip(results["sharded"], results["single"], strict=True):
        fields = ("train_loss", "test_loss", "trace", "entropy", "cosine_effective_rank", "init_alignment")
        for field in fields:
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=RTOL), field
        _close(a.top_eigenvalues, b.top_eigenvalues)


def test_stochastic_spectrum_matches_single_device():
    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0), width=16)
    x = inputs("relu_mlp", 0, 30, jnp.float32)  # 90 rows; 30 samples on a data axis of 4: uneven
    single, sharded = ntkspec.ntk(module, x), ntkspec.ntk(module, x, mesh=make_mesh("data=4,model=2"))
    key = jax.random.key(3)
    a, b = (ntkspec.spectrum(op, "stochastic", key=key, budget=60, top_k=3) for op in (sharded, single))
    assert a.effective_rank == pytest.approx(b.effective_rank, rel=RTOL)
    assert a.entropy_stderr == pytest.approx(b.entropy_stderr, rel=1e-3)
    _close(a.eigenvalues, b.eigenvalues)


def test_cli_spectrum_with_a_mesh():
    from typer.testing import CliRunner

    from ntkspec.cli import app

    args = ["spectrum", "--width", "16", "--n-ntk", "12", "--method", "exact"]
    single = CliRunner().invoke(app, args)
    sharded = CliRunner().invoke(app, [*args, "--mesh", "data=2,model=2"])
    assert single.exit_code == 0 and sharded.exit_code == 0, sharded.output
    assert "effective rank" in sharded.output.lower()
    bad = CliRunner().invoke(app, [*args, "--mesh", "data=3,model=5"])
    assert bad.exit_code != 0 and "mesh" in bad.output
