"""Checkpoints: an ensemble resumed from any of its checkpoints, read back from the store, ends as the
uninterrupted one (records, minimum, trajectory, parameters; with a diverged network and patience
stops among them, exact and stochastic measurements); a checkpoint of other networks is refused; a
sweep killed mid-ensemble goes on from its checkpoint, keeping the records made before it."""

import dataclasses

import jax
import numpy as np
import pytest
import zarr
from flax import nnx

from ntkspec import data, models
from ntkspec.experiments import store
from ntkspec.experiments.measure import Measure
from ntkspec.experiments.train import make_optimizer, train_ensemble

EPOCHS = [0, 5, 40, 150]
OPTIMIZER = make_optimizer("adam", 3e-2)


@pytest.fixture(scope="module")
def splits():
    dataset = data.load("digits")
    splits = [data.split(dataset, 60, 6, jax.random.key(seed), n_test=100) for seed in range(3)]
    x_train = splits[2].x_train.copy()
    x_train[3, 5] = np.nan  # network 2 diverges at its first step
    return [*splits[:2], dataclasses.replace(splits[2], x_train=x_train)]


def _train(splits, method, width=8, **kwargs):
    records = [[] for _ in splits]
    results = train_ensemble(
        [models.build("mlp", (64,), 10, jax.random.key(10 + e), width=width, depth=3) for e in range(3)],
        splits,
        OPTIMIZER,
        EPOCHS,
        [Measure(split, jax.random.key(e), top_k=3, method=method) for e, split in enumerate(splits)],
        recorders=[r.append for r in records],
        eval_every=5,
        patience=20,
        **kwargs,
    )
    return results, records


@pytest.mark.parametrize("method", ["exact", "stochastic"])
def test_resumed_ensemble_ends_as_the_uninterrupted_one(splits, method, tmp_path):
    states = []
    results, records = _train(splits, method, checkpoint=states.append, checkpoint_every=0)
    assert [r.status for r in results] == ["complete", "complete", "diverged"]
    assert [s.epoch for s in states] == list(range(0, 5 * len(states), 5))  # while a network trains
    assert states[-1].arrays["active"].tolist() == [False, True, False]  # after a patience stop
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    for state in (states[1], states[-1]):  # before and after the patience stops
        store.write_checkpoint(root, "w8_s0-2", state)
        back = store.read_checkpoint(root.store.root, "w8_s0-2")
        assert back.epoch == state.epoch and back.messages == state.messages
        assert all(
            np.array_equal(back.arrays[k], a, equal_nan=a.dtype.kind == "f") for k, a in state.arrays.items()
        )
        resumed, later = _train(splits, method, resume=back)
        for e in range(3):
            got, want = resumed[e], results[e]
            assert (got.status, got.message, got.n_records) == (want.status, want.message, want.n_records)
            assert (got.min_epoch, got.stopped, got.min_test_loss) == (
                want.min_epoch,
                want.stopped,
                want.min_test_loss,
            )
            for name, values in want.trajectory.items():
                np.testing.assert_array_equal(got.trajectory[name], values)
            pairs = list(zip(later[e], [r for r in records[e] if r.epoch > state.epoch], strict=True))
            if want.minimum is not None:
                pairs.append((got.minimum, want.minimum))
            for a, b in pairs:
                for field in (
                    "epoch",
                    "test_loss",
                    "trace",
                    "init_alignment",
                    "kernel_velocity",
                    "eigenvector_rotation",
                ):
                    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
            for a, b in zip(
                *(jax.tree.leaves(nnx.state(r.model, nnx.Param)) for r in (got, want)), strict=True
            ):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    store.delete_checkpoint(root, "w8_s0-2")
    assert store.read_checkpoint(root.store.root, "w8_s0-2") is None


def test_checkpoint_of_other_networks_is_refused(splits):
    states = []
    _train(splits[:1] * 3, "exact", checkpoint=states.append, checkpoint_every=0)
    with pytest.raises(
        ValueError,
        match=r"`resume`: got train/0 with shape \(3, 8\) float32, expected shape \(3, 16\) float32",
    ):
        _train(splits[:1] * 3, "exact", width=16, resume=states[0])
