import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from ntkspec import data, models  # noqa: E402
from ntkspec.estimators import kernel_alignment  # noqa: E402
from ntkspec.experiments import train  # noqa: E402
from ntkspec.experiments.measure import Measure  # noqa: E402
from ntkspec.operator import ntk  # noqa: E402


def test_mlp_structure_and_init(key):
    model = models.build("mlp", (8, 8, 1), 10, key, width=256, depth=4)
    kernels = [layer.kernel[...] for layer in model.layers]
    assert [k.shape for k in kernels] == [(64, 256), (256, 256), (256, 256), (256, 10)]
    assert all(float(jnp.abs(layer.bias[...]).max()) == 0.0 for layer in model.layers)
    # LeCun normal: Var w = 1 / fan_in.
    assert float(jnp.var(kernels[1])) * 256 == pytest.approx(1.0, rel=0.05)
    assert kernels[0].dtype == jnp.float32
    assert model(jnp.ones((3, 64), jnp.float32)).shape == (3, 10)
    with pytest.raises(ValueError, match="`width`: got 0"):
        models.build("mlp", (64,), 10, key, width=0, depth=3)
    with pytest.raises(ValueError, match="`model`"):
        models.build("resnet", (64,), 10, key)


def test_cnn_structure_and_init(key):
    model = models.build("cnn", (32, 32, 3), 4, key)
    params = nnx.state(model, nnx.Param)
    assert model(jnp.ones((2, 32, 32, 3), jnp.float32)).shape == (2, 4)
    assert [c.kernel[...].shape for c in model.convs] == [(3, 3, 3, 32), (3, 3, 32, 32)] * 1 + [
        (3, 3, 32, 32)
    ]
    assert model.dense.kernel[...].shape == (4 * 4 * 32, 64)
    # He uniform: U(-b, b), b = sqrt(6 / fan_in).
    bound = np.sqrt(6 / (4 * 4 * 32))
    assert float(jnp.abs(model.dense.kernel[...]).max()) <= bound
    assert len(jax.tree.leaves(params)) == 10


def test_record_epochs():
    np.testing.assert_array_equal(train.record_epochs(10, 6, "linear"), [0, 2, 4, 6, 8, 10])
    log = train.record_epochs(1000, 5, "log")
    np.testing.assert_array_equal(log, [0, 1, 10, 100, 1000])
    assert train.record_epochs(3, 10, "log").tolist() == [0, 1, 2, 3]
    assert train.record_epochs(40, 2, "log").tolist() == [0, 40]  # two records: the first and last
    with pytest.raises(ValueError, match="`spacing`"):
        train.record_epochs(10, 3, "cubic")


@pytest.fixture(scope="module")
def tiny_split():
    return data.split(data.load("digits"), 30, 4, jax.random.key(0), n_test=40)


def test_train_records_and_learns(tiny_split, key):
    model = models.build("mlp", (64,), 10, key, width=16, depth=3)
    before = [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model))]
    records = []
    result = train.train(
        model,
        tiny_split,
        train.make_optimizer("adam", 1e-2),
        [0, 5, 40],
        Measure(tiny_split, key, top_k=3),
        recorder=records.append,
    )
    assert result.status == "complete" and result.n_records == 3
    assert [r.epoch for r in records] == [0, 5, 40]
    assert records[-1].train_loss < records[0].train_loss
    assert records[-1].train_accuracy > 0.5
    first = records[0]
    assert first.top_eigenvalues.shape == (3,) and np.all(np.diff(first.top_eigenvalues) <= 0)
    assert 1.0 <= first.effective_rank <= 40 and first.trace > 0
    assert first.method == "exact" and np.isfinite(first.cosine_entropy)
    # The model passed in is not trained in place.
    after = [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model))]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_learning_rates_share_one_compiled_loop_and_step_as_plain_optax(tiny_split, key, name):
    """A calibration's pilots differ only in their learning rate: they reuse one compiled training
    loop (a compilation took 47 s on a GPU), and each steps as Optax's own optimiser at that rate."""
    model = models.build("mlp", (64,), 10, key, width=16, depth=3)
    train.train(model, tiny_split, train.make_optimizer(name, 1e-3), [0, 4], eval_every=2)
    compiled = train._compiled_epochs._cache_size()
    lr = 3e-3
    got = train.train(model, tiny_split, train.make_optimizer(name, lr), [0, 4], eval_every=2).model
    assert train._compiled_epochs._cache_size() == compiled

    plain = {"adam": optax.adam(lr), "sgd": optax.sgd(lr, momentum=0.9)}[name]
    graphdef, params = nnx.split(model)
    state = plain.init(params)
    x, y = jnp.asarray(tiny_split.x_train), jnp.asarray(tiny_split.y_train)

    def loss(p):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(x), y))

    for _ in range(4):
        updates, state = plain.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree.leaves(nnx.state(got)), jax.tree.leaves(params), strict=True):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_divergence_is_a_status_not_an_exception(tiny_split, key):
    model = models.build("mlp", (64,), 10, key, width=8, depth=3)
    records = []
    result = train.train(
        model,
        tiny_split,
        train.make_optimizer("sgd", 1e30),
        [0, 10, 20],
        Measure(tiny_split, key, top_k=3),
        recorder=records.append,
    )
    assert result.status == "diverged"
    assert "lower learning rate" in result.message and "epochs 0 and 10" in result.message
    assert result.n_records == len(records) == 1


def test_top_eigenvalues_padded_when_kernel_is_small(tiny_split, key):
    model = models.build("mlp", (64,), 10, key, width=8, depth=3)
    records = []
    train.train(
        model,
        tiny_split,
        train.make_optimizer("adam", 1e-3),
        [0],
        Measure(tiny_split, key, top_k=50),
        recorder=records.append,
    )
    top = records[0].top_eigenvalues
    assert top.shape == (50,) and np.isnan(top[40:]).all() and np.isfinite(top[:40]).all()


@pytest.mark.parametrize("method", ["exact", "stochastic"])
def test_train_records_how_far_the_kernel_moved(tiny_split, key, method):
    model = models.build("mlp", (64,), 10, key, width=16, depth=3)
    records = []
    result = train.train(
        model,
        tiny_split,
        train.make_optimizer("adam", 1e-2),
        [0, 40],
        Measure(tiny_split, key, top_k=3, method=method),
        recorder=records.append,
    )
    first, last = records
    assert first.method == method
    assert first.init_alignment == pytest.approx(1.0, abs=1e-6) and first.init_alignment_stderr < 1e-12
    x = jnp.asarray(tiny_split.x_ntk)
    expected = float(kernel_alignment(ntk(model, x).dense(), ntk(result.model, x).dense()).value)
    # 40 rows: the matrix-free sketch spans all of them, so it is exact too.
    assert last.init_alignment == pytest.approx(expected, rel=1e-5)
    assert 0.0 < last.init_alignment < 0.999
    # Two records: the velocity at the second is its move from the first.
    assert np.isnan(first.kernel_velocity)
    assert last.kernel_velocity == pytest.approx(1 - last.init_alignment, abs=1e-5)
    assert 0 < last.infinite_distance and 0 < last.infinite_alignment < 1
    assert 0 <= last.regression_error <= 1
