"""Ensembles in one program: `train_ensemble` equals separate `train` runs seed by seed (own minimum,
own patience stop, own divergence), refuses seeds of different shapes, a sweep with
`ensemble = true` writes the store that `ensemble = false` writes, and a CNN's ensemble, unrolled on
the CPU, equals the vmapped one."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import ntkspec
from ntkspec import data, models
from ntkspec.experiments import sweep
from ntkspec.experiments.config import load_config
from ntkspec.experiments.measure import Measure
from ntkspec.experiments.train import make_optimizer, train, train_ensemble

EPOCHS = [0, 5, 40, 150]
SETTINGS = {"eval_every": 5, "patience": 20}
OPTIMIZER = make_optimizer("adam", 3e-2)  # one object: one compiled loop for every run here
RTOL = 1e-5
RECORD_FIELDS = ("epoch", "train_loss", "test_loss", "trace", "entropy", "init_alignment", "label_alignment")


@pytest.fixture(scope="module")
def splits():
    dataset = data.load("digits")
    return [data.split(dataset, 60, 6, jax.random.key(seed), n_test=100) for seed in range(3)]


def _model(seed, width=8):
    return models.build("mlp", (64,), 10, jax.random.key(10 + seed), width=width, depth=3)


def _measure(split, seed):
    return Measure(split, jax.random.key(seed), top_k=3)


@pytest.fixture(scope="module")
def separate(splits):
    """Each seed trained alone: (result, records)."""
    out = []
    for seed, split in enumerate(splits):
        records = []
        result = train(
            _model(seed), split, OPTIMIZER, EPOCHS, _measure(split, seed), recorder=records.append, **SETTINGS
        )
        out.append((result, records))
    return out


def _ensemble(splits, seeds):
    records = [[] for _ in seeds]
    results = train_ensemble(
        [_model(seed) for seed in seeds],
        splits,
        OPTIMIZER,
        EPOCHS,
        [_measure(split, seed) for split, seed in zip(splits, seeds, strict=True)],
        recorders=[r.append for r in records],
        **SETTINGS,
    )
    return list(zip(results, records, strict=True))


def _same_run(got, want):
    (result, records), (single, single_records) = got, want
    assert result.status == single.status and result.message == single.message
    assert result.min_epoch == single.min_epoch and result.stopped == single.stopped
    assert result.n_records == single.n_records == len(records) == len(single_records)
    assert result.min_test_loss == pytest.approx(single.min_test_loss, rel=RTOL, nan_ok=True)
    assert result.trajectory.keys() == single.trajectory.keys()
    for name, values in single.trajectory.items():
        np.testing.assert_allclose(result.trajectory[name], values, rtol=RTOL)
    pairs = list(zip(records, single_records, strict=True))
    if single.minimum is not None:
        pairs.append((result.minimum, single.minimum))
    for a, b in pairs:
        for field in RECORD_FIELDS:
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=RTOL, abs=1e-7), field
        np.testing.assert_allclose(a.top_eigenvalues, b.top_eigenvalues, rtol=RTOL)
    for a, b in zip(*(jax.tree.leaves(nnx.state(r.model, nnx.Param)) for r in (result, single)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=1e-6)


def test_ensemble_equals_separate_runs_seed_by_seed(splits, separate):
    got = _ensemble(splits, range(3))
    stops = {result.stopped for result, _ in got}
    assert len(stops) > 1 and max(stops) < EPOCHS[-1]  # patience stopped the seeds at different epochs
    for one, want in zip(got, separate, strict=True):
        assert one[0].status == "complete"
        _same_run(one, want)


def test_one_shared_step_count_trains_as_a_count_per_network(splits):
    """Networks that all take the same steps share one unbatched loop (`_epochs`); it gives the
    per-network loop's numbers, and a count of 0 in that loop still freezes its network."""
    from ntkspec.experiments import train as training

    graphdef, params = training._stack("models", [nnx.split(_model(seed)) for seed in range(2)])
    carry = (params, jax.vmap(OPTIMIZER.init)(params), np.ones(2, bool))
    statics = (graphdef, OPTIMIZER.update, None, False)
    data_ = (np.zeros(2, np.int64), jax.random.split(jax.random.key(0), 2))
    data_ += tuple(np.stack([getattr(s, name) for s in splits[:2]]) for name in ("x_train", "y_train"))

    def epochs(n_steps, per_network):
        run = training._compiled_epochs if per_network else training._epochs
        return run(training._training_epoch, statics, carry, n_steps, *data_)[0]

    shared, per_network = epochs(np.array([7, 7]), False), epochs(np.array([7, 7]), True)
    frozen = epochs(np.array([7, 0]), False)
    for a, b, c, start in zip(*map(jax.tree.leaves, (shared, per_network, frozen, params)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(c[0], a[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(c[1], start[1])
    assert not np.allclose(jax.tree.leaves(shared)[0][1], jax.tree.leaves(params)[0][1])


def test_one_diverged_seed_does_not_stop_the_others(splits, separate):
    x_train = splits[1].x_train.copy()
    x_train[3, 5] = np.nan
    poisoned = dataclasses.replace(splits[1], x_train=x_train)
    got = _ensemble([splits[0], poisoned, splits[2]], range(3))
    alone = []
    single = train(
        _model(1), poisoned, OPTIMIZER, EPOCHS, _measure(poisoned, 1), recorder=alone.append, **SETTINGS
    )
    assert single.status == "diverged" and "lower learning rate" in single.message
    _same_run(got[1], (single, alone))
    for seed in (0, 2):
        _same_run(got[seed], separate[seed])


def test_seeds_of_different_shapes_are_refused(splits):
    with pytest.raises(ValueError, match=r"`models`: got entry 1 with \['layers'\]\[0\]\['bias'\]") as info:
        train_ensemble([_model(0), _model(1, width=16)], splits[:2], OPTIMIZER, [0, 5])
    assert "of shape (16,) float32, expected shape (8,) float32, as in entry 0" in str(info.value)
    smaller = data.split(data.load("digits"), 50, 6, jax.random.key(1), n_test=100)
    with pytest.raises(ValueError, match=r"`splits`: got entry 1 with \[0\] of shape \(50, 64\)"):
        train_ensemble([_model(0), _model(1)], [splits[0], smaller], OPTIMIZER, [0, 5])
    with pytest.raises(ValueError, match="`splits`: got 1 entries for 2 models"):
        train_ensemble([_model(0), _model(1)], splits[:1], OPTIMIZER, [0, 5])


TINY = """
name = "ens"
kind = "width"
dataset = "digits"
depth = 3
widths = [8]
seeds = 3
n_train = 20
n_ntk = 4
n_test = 20
lr = 0.05
epochs = 20
eval_every = 2
patience = 4
n_records = 3
spacing = "linear"
top_k = 3
dtype = "float64"
"""


def test_sweep_as_ensembles_writes_the_store_of_the_per_seed_loop(tmp_path, monkeypatch):
    path = tmp_path / "ens.toml"
    path.write_text(TINY)
    sizes, real = [], sweep.train_ensemble

    def counted(models, *args, **kwargs):
        sizes.append(len(models))
        return real(models, *args, **kwargs)

    monkeypatch.setattr(sweep, "train_ensemble", counted)
    loop = load_config(path, ensemble=False, store=str(tmp_path / "loop.zarr"))
    assert sweep.run_sweep(loop).complete and sizes == [1] * 3
    sizes.clear()
    ensembles = load_config(path, store=str(tmp_path / "ensembles.zarr"))
    assert ensembles.ensemble  # the default
    first = sweep.run_sweep(ensembles, task="0/2")  # the seeds of the point that this task owns
    assert first.done == ("w8_s0", "w8_s2") and sizes == [2]
    assert sweep.run_sweep(ensembles, task="1/2").complete and sizes == [2, 1]
    # float64: the per-record kernel regression (ridge 1e-4 of the mean diagonal) amplifies the
    # last-bit differences between an ensemble's programs and a single run's, in float32 up to 1e-3
    # relative on some CPUs; in float64 every field agrees to RTOL.
    want, got = ntkspec.open_sweep(loop.store_path), ntkspec.open_sweep(ensembles.store_path)
    assert set(got.data_vars) == set(want.data_vars) and (got["status"] == "complete").all()
    assert len(set(np.asarray(got["stopped_epoch"]).ravel())) > 1  # seeds stopped at different epochs
    for name, values in want.data_vars.items():
        if "seconds" in name:  # timings
            continue
        if values.dtype.kind == "f":
            np.testing.assert_allclose(got[name], values, rtol=RTOL, atol=1e-7, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], values, err_msg=name)
    # A store may be resumed with the other setting: it does not change the numbers.
    assert sweep.run_sweep(dataclasses.replace(loop, ensemble=True)).skipped == tuple(
        want["name"].values.ravel()
    )


def test_cnn_ensemble_unrolled_on_the_cpu_equals_the_vmapped_loop(monkeypatch):
    """A network that convolves trains on the CPU with its epochs dispatched one by one and its
    networks unrolled (`ensemble.over_networks`); forced through the compiled, vmapped path (which
    equals separate runs, above), it gives the same runs."""
    from ntkspec.experiments import ensemble
    from ntkspec.experiments import train as training

    dataset = data.load("digits")
    images = [data.split(dataset, 24, 4, jax.random.key(s), n_test=30, flatten=False) for s in range(2)]
    cnns = [models.build("cnn", images[0].x_train.shape[1:], 10, jax.random.key(2 + s)) for s in range(2)]
    graphdef, params = nnx.split(cnns[0])
    stacked = jax.tree.map(lambda a: a[None], params)
    assert ensemble.convolves_on_cpu(graphdef, stacked, images[0].x_train[None])
    mlp_graph, mlp_params = nnx.split(_model(0))
    assert not ensemble.convolves_on_cpu(
        mlp_graph, jax.tree.map(lambda a: a[None], mlp_params), np.zeros((1, 2, 64))
    )

    optimizer = make_optimizer("sgd", 0.05, momentum=0.9)
    orders = [jax.random.key(5 + s) for s in range(2)]
    settings = dict(eval_every=2, batch_size=16)

    def run(networks, splits, keys):
        records = [[] for _ in networks]
        results = train_ensemble(
            networks,
            splits,
            optimizer,
            [0, 1, 4],
            [Measure(split, jax.random.key(9), top_k=3) for split in splits],
            recorders=[r.append for r in records],
            orders=keys,
            **settings,
        )
        return list(zip(results, records, strict=True))

    unrolled = run(cnns, images, orders)
    monkeypatch.setattr(training, "convolves_on_cpu", lambda *args: False)
    for one, looped in zip(unrolled, run(cnns, images, orders), strict=True):
        assert one[0].status == "complete"
        _same_run(one, looped)
