"""Minibatch training: epochs of shuffled minibatches equal a hand-written Optax loop over the same
permutations, the parameters kept at the minimum equal a run stopped there, an ensemble equals its
seeds run alone, a sweep config trains so, and bad settings are named."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ntkspec import data, models
from ntkspec.experiments.config import load_config, runs
from ntkspec.experiments.train import make_optimizer, train, train_ensemble

BATCH = 16  # 50 samples: batches of 16, 16, 16 and 2


@pytest.fixture(scope="module")
def split():
    return data.split(data.load("digits"), 50, 4, jax.random.key(0), n_test=200)


def _model(seed=1, init=None):
    return models.build("mlp", (64,), 10, jax.random.key(seed), width=16, depth=3, init=init)


def _leaves(model):
    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _by_hand(model, split, optimizer, epochs, key):
    """SGD over the permutations of fold_in(key, epoch), written out step by step."""
    graphdef, params = nnx.split(model)
    state = optimizer.init(params)
    x, y = jnp.asarray(split.x_train), jnp.asarray(split.y_train)

    def loss(p, xb, yb):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(xb), yb))

    gradient = jax.jit(jax.grad(loss))

    for epoch in range(epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), x.shape[0]))
        for start in range(0, x.shape[0], BATCH):
            index = order[start : start + BATCH]
            grads = gradient(params, x[index], y[index])
            updates, state = optimizer.update(grads, state, params)
            params = optax.apply_updates(params, updates)
    return nnx.merge(graphdef, params)


def test_minibatch_epochs_equal_a_hand_written_loop(split):
    optimizer = make_optimizer("sgd", 0.05, momentum=0.9)
    key = jax.random.key(7)
    result = train(_model(), split, optimizer, [0, 6], batch_size=BATCH, order=key, eval_every=3)
    want = _by_hand(_model(), split, optimizer, 6, key)
    for got, expected in zip(_leaves(result.model), _leaves(want), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    full = train(_model(), split, optimizer, [0, 6], eval_every=3)  # another training altogether
    assert not np.allclose(_leaves(full.model)[0], _leaves(result.model)[0])


def test_minibatch_minimum_equals_a_run_stopped_there(split):
    optimizer = make_optimizer("sgd", 0.05, momentum=0.9)
    key = jax.random.key(3)
    result = train(_model(), split, optimizer, [0, 60], batch_size=BATCH, order=key, eval_every=7)
    assert 0 < result.min_epoch < 60
    stopped = train(
        _model(), split, optimizer, [result.min_epoch], batch_size=BATCH, order=key, eval_every=1000
    )
    for got, expected in zip(_leaves(result.min_model), _leaves(stopped.model), strict=True):
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6)


def test_minibatch_ensemble_equals_its_seeds_alone(split):
    optimizer = make_optimizer("sgd", 0.05, momentum=0.9)
    keys = [jax.random.key(10 + seed) for seed in range(2)]
    together = train_ensemble(
        [_model(seed) for seed in range(2)], [split] * 2, optimizer, [0, 20], batch_size=BATCH, orders=keys
    )
    for seed, result in enumerate(together):
        alone = train(_model(seed), split, optimizer, [0, 20], batch_size=BATCH, order=keys[seed])
        assert result.min_epoch == alone.min_epoch
        for got, expected in zip(_leaves(result.model), _leaves(alone.model), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_xavier_uniform_mlp(key):
    model = models.build("mlp", (64,), 4, key, width=256, depth=4, init="xavier_uniform")
    kernel = np.asarray(model.layers[1].kernel[...])
    bound = np.sqrt(6 / (256 + 256))  # U(-b, b): variance 2 / (fan_in + fan_out)
    assert np.abs(kernel).max() <= bound and np.var(kernel) == pytest.approx(bound**2 / 3, rel=0.05)
    assert model.init == "xavier_uniform"


def test_sweep_configs_pass_batches_and_init():
    config = load_config("quickstart", batch_size=32, optimizer="sgd", init="xavier_uniform")
    first, second = runs(config)[:2]
    assert config.batch_size == 32 and config.init == "xavier_uniform"
    assert not np.array_equal(jax.random.key_data(first.order_key()), jax.random.key_data(second.order_key()))
    assert "batch_size" not in load_config("quickstart").to_dict()  # full-batch stores keep their form


def test_bad_minibatch_settings_are_named(split):
    optimizer = make_optimizer("sgd", 0.05)
    with pytest.raises(ValueError, match="`batch_size`: got 0"):
        train(_model(), split, optimizer, [0, 2], batch_size=0, order=jax.random.key(0))
    with pytest.raises(ValueError, match="`orders`: got None"):
        train(_model(), split, optimizer, [0, 2], batch_size=8)
    with pytest.raises(ValueError, match="`batch_size`: got 0"):
        load_config("quickstart", batch_size=0)
    with pytest.raises(ValueError, match="`init`: got 'orthogonal'"):
        load_config("quickstart", init="orthogonal")
    with pytest.raises(ValueError, match="`kernels`"):
        load_config("digits-kernel-scaling", init="xavier_uniform")
