"""Sharded operator on 8 simulated CPU devices (set in conftest) equals the single-device one."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, Mesh
from jax.sharding import PartitionSpec as P
from reference_models import NNX_MODELS, inputs

import ntkspec
from ntkspec import data, models
from ntkspec.experiments.measure import Measure
from ntkspec.experiments.train import make_optimizer, train
from ntkspec.sharding import make_mesh, param_spec, shard_params

RTOL = 1e-5
# Meshes as users build them: jax.make_mesh (Explicit axes by default since JAX 0.7, or Auto), and
# Mesh(...) directly (Auto). All have the devices and axes of make_mesh("data=4,model=2").
MESHES = {
    "make_mesh-explicit": lambda: jax.make_mesh((4, 2), ("data", "model")),
    "make_mesh-auto": lambda: jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2),
    "Mesh": lambda: Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model")),
}


@pytest.fixture(scope="module")
def model_and_x():
    module = NNX_MODELS["relu_mlp"](nnx.Rngs(0), width=16)
    x = inputs("relu_mlp", 0, 6, jnp.float32)  # 6 samples on a data axis of 4: uneven
    return module, x


@pytest.fixture(scope="module")
def pair(model_and_x):
    module, x = model_and_x
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


ADAM = make_optimizer("adam", 1e-2)  # one object for every run: one compiled training loop


@functools.cache
def _training(mesh, set_mesh=None):
    """(records, result) of one short training run on `mesh` (None: one device), run once; with
    `set_mesh`, the model is built and trained under `jax.set_mesh(set_mesh)`."""
    records = []
    with jax.set_mesh(set_mesh) if set_mesh is not None else contextlib.nullcontext():
        split = data.split(data.load("digits"), 30, 14, jax.random.key(0), n_test=50)  # 14 on data=4: uneven
        model = models.build("mlp", (64,), 10, jax.random.key(1), width=16, depth=3)
        result = train(
            model,
            split,
            ADAM,
            [0, 3, 6],
            Measure(split, jax.random.key(2), top_k=5, method="exact", mesh=mesh),
            recorder=records.append,
            mesh=mesh,
        )
    return records, result


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


def _measures(op, v):
    """What the operator gives: K v, diag K, K, the cosine kernel times v, and the exact spectrum."""
    spectrum = ntkspec.spectrum(op, "exact")
    return {
        "matvec": op.matvec(v),
        "diagonal": op.diagonal(),
        "dense": op.dense(),
        "cosine matvec": op.normalized().matvec(v),
        "cosine diagonal": op.normalized().diagonal(),
        "eigenvalues": spectrum.eigenvalues,
        "entropy": spectrum.entropy,
    }


def _same_measures(got, want):
    for name, value in want.items():
        _close(got[name], value)


@pytest.fixture(scope="module")
def single_measures(pair):
    single, _, _ = pair
    v = jax.random.normal(jax.random.key(1), (single.shape[0], 5), jnp.float32)
    return v, _measures(single, v)


@pytest.mark.parametrize("kind", MESHES)
def test_any_mesh_matches_single_device(kind, model_and_x, single_measures):
    module, x = model_and_x
    v, want = single_measures
    mesh = MESHES[kind]()
    op = ntkspec.ntk(module, x, mesh=mesh)
    # Computed on the Auto view of the mesh: the same devices and axes as make_mesh's.
    assert op.mesh == make_mesh("data=4,model=2")
    assert op.mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert op.params["layers"][1]["kernel"].sharding.spec == P(None, "model")
    _same_measures(_measures(op, v), want)


def test_mesh_set_with_jax_set_mesh(model_and_x, single_measures):
    module, x = model_and_x
    _, want = single_measures
    mesh = MESHES["make_mesh-explicit"]()
    with jax.set_mesh(mesh):
        op = ntkspec.ntk(module, x)  # mesh=None: the one set
        v = jax.random.normal(jax.random.key(1), (op.shape[0], 5), jnp.float32)  # typed on `mesh`
        got = _measures(op, v)
        # Arrays come back replicated on the caller's mesh, usable by its sharding-typed code.
        assert all(got[name].sharding.mesh == mesh for name in ("matvec", "diagonal", "dense"))
        trace = jnp.trace(got["dense"])
        dense_spectrum = ntkspec.spectrum(got["dense"], "exact")
    assert op.mesh == make_mesh("data=4,model=2")
    assert op.params["layers"][1]["kernel"].sharding.spec == P(None, "model")
    _same_measures(got, want)
    _close(trace, jnp.sum(want["diagonal"]))
    _close(dense_spectrum.eigenvalues, want["eigenvalues"])


def test_mesh_without_data_and_model_axes_gets_a_clear_error(model_and_x):
    module, x = model_and_x
    flat = jax.make_mesh((8,), ("batch",))
    message = r"`mesh`: got {}, expected a jax.sharding.Mesh with axes 'data' and 'model'. Build one"
    axes = r"a mesh with axes \('batch',\)"
    with pytest.raises(ValueError, match=message.format(axes)):
        ntkspec.ntk(module, x, mesh=flat)
    with pytest.raises(ValueError, match=message.format("an object of type str")):
        ntkspec.ntk(module, x, mesh="data=4,model=2")
    with (
        jax.set_mesh(flat),
        pytest.raises(
            ValueError, match=message.format("None, and the mesh set with jax.set_mesh is " + axes)
        ),
    ):
        ntkspec.ntk(module, x)
    with pytest.raises(ValueError, match=message.format(axes)):
        train(module, None, ADAM, [0], mesh=flat)
    with pytest.raises(ValueError, match=message.format(axes)):
        shard_params({"w": jnp.zeros((4, 4))}, flat)
    with pytest.raises(ValueError, match=r"`mesh`: got None, expected a jax.sharding.Mesh \(none is set"):
        shard_params({"w": jnp.zeros((4, 4))}, None)


def _same_training(run, reference):
    (records, result), (want, single) = run, reference
    for a, b in zip(records, want, strict=True):
        fields = ("train_loss", "test_loss", "trace", "entropy", "cosine_effective_rank", "init_alignment")
        for field in fields:
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=RTOL), field
        _close(a.top_eigenvalues, b.top_eigenvalues)
    params, want_params = (jax.tree.leaves(nnx.state(r.model, nnx.Param)) for r in (result, single))
    for a, b in zip(params, want_params, strict=True):
        _close(a, b)


# The training tests share `_training(None)`, the single-device run: one worker runs them all.
@pytest.mark.xdist_group("sharded_training")
@pytest.mark.parametrize("kind", MESHES)
def test_training_on_any_mesh_matches_single_device(kind):
    # The Auto meshes are make_mesh's own (JAX interns meshes): their run is the one above.
    _same_training(_training(MESHES[kind]()), _training(None))


@pytest.mark.xdist_group("sharded_training")
def test_training_on_the_mesh_set_with_jax_set_mesh():
    run = _training(None, set_mesh=MESHES["make_mesh-explicit"]())
    _same_training(run, _training(None))
    params = jax.tree.leaves(nnx.state(run[1].model, nnx.Param))
    assert any("model" in leaf.sharding.spec for leaf in params)  # trained sharded on the set mesh
