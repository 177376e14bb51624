import gzip
import pickle

import jax
import numpy as np
import pytest

from ntkspec import data


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as stream:
            stream.write(payload)
    else:
        path.write_bytes(payload)


def _images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.fixture
def idx_dir(tmp_path):
    """mnist/ with gzip train files and raw t10k files; fashion_mnist/ with t10k files only."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    pools = {}
    for part, n, compress in (("train", 60, True), ("t10k", 40, False)):
        x, y = _images(rng, n, (28, 28)), rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(folder / f"{part}-images-idx3-ubyte", x, compress)
        _write_idx(folder / f"{part}-labels-idx1-ubyte", y, compress)
        pools[part] = (x, y)
    fashion = tmp_path / "fashion_mnist"
    fashion.mkdir()
    x, y = _images(rng, 50, (28, 28)), np.arange(50, dtype=np.uint8) % 10
    _write_idx(fashion / "t10k-images-idx3-ubyte", x, True)
    _write_idx(fashion / "t10k-labels-idx1-ubyte", y, True)
    pools["fashion"] = (x, y)
    return tmp_path, pools


def test_idx_files_gzip_and_raw(idx_dir):
    root, pools = idx_dir
    ds = data.load("mnist", root)
    assert ds.x_train.shape == (60, 28, 28, 1) and ds.x_test.shape == (40, 28, 28, 1)
    np.testing.assert_allclose(ds.x_train[..., 0], pools["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, pools["t10k"][1])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_t10k_only_is_one_pool_split_three_ways(idx_dir, key):
    root, pools = idx_dir
    ds = data.load("fashion_mnist", root)
    assert ds.x_test is None and ds.classes[0] == "t-shirt/top"
    s = data.split(ds, 20, 8, key)
    assert s.x_train.shape == (20, 784) and s.x_ntk.shape == (8, 784) and s.x_test.shape == (22, 784)
    # The three parts are disjoint and together are the whole pool.
    rows = np.round(np.concatenate([s.x_train, s.x_ntk, s.x_test]) * 255).astype(np.uint8)
    flat = pools["fashion"][0].reshape(50, -1)
    assert sorted(r.tobytes() for r in rows) == sorted(r.tobytes() for r in flat)


def test_split_deterministic_nested_and_held_out(idx_dir):
    root, _ = idx_dir
    ds = data.load("mnist", root)
    a = data.split(ds, 10, 8, jax.random.key(3), n_test=5, flatten=False)
    b = data.split(ds, 20, 8, jax.random.key(3), n_test=5, flatten=False)
    c = data.split(ds, 10, 8, jax.random.key(4), n_test=5, flatten=False)
    assert a.x_train.shape == (10, 28, 28, 1) and a.x_test.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(a.x_train, b.x_train[:10])  # nested training sets
    np.testing.assert_array_equal(a.x_ntk, b.x_ntk)  # shared NTK batch and test set
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_train, c.x_train)
    # NTK batch and test set come from the held-out (t10k) pool.
    held = {r.tobytes() for r in ds.x_test}
    assert all(r.tobytes() in held for r in a.x_ntk) and all(r.tobytes() in held for r in a.x_test)


def test_cifar_batches_class_subset_and_noisy_copies(tmp_path, key):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in (("data_batch_1", 60), ("data_batch_2", 60), ("test_batch", 50)):
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in np.arange(n) % 10],
        }
        with open(folder / name, "wb") as stream:
            pickle.dump(batch, stream)
    ds = data.load("cifar10", tmp_path)
    assert ds.x_train.shape == (120, 32, 32, 3) and ds.x_test.shape == (50, 32, 32, 3)
    # Channel-first rows become (H, W, C) images.
    with open(folder / "data_batch_1", "rb") as stream:
        first = pickle.load(stream)[b"data"][0]
    np.testing.assert_allclose(ds.x_train[0, :, :, 1], first[1024:2048].reshape(32, 32) / 255.0)

    s = data.split(ds, 40, 8, key, classes=data.CIFAR4_CLASSES, noise_fraction=0.5, flatten=False)
    assert s.classes == data.CIFAR4_CLASSES and set(np.unique(s.y_train)) <= {0, 1, 2, 3}
    clean = data.split(ds, 40, 8, key, classes=data.CIFAR4_CLASSES, flatten=False)
    np.testing.assert_array_equal(s.y_train, clean.y_train)
    for c in range(4):
        members = np.flatnonzero(s.y_train == c)
        changed = [i for i in members if not np.array_equal(s.x_train[i], clean.x_train[i])]
        assert len(changed) == round(0.5 * members.size)
        for i in changed:  # a kept sample of the same class plus N(0, 0.01^2) noise
            kept = [j for j in members if j not in changed]
            dist = [np.abs(s.x_train[i] - clean.x_train[j]).max() for j in kept]
            assert min(dist) < 0.06
            assert np.std(s.x_train[i] - clean.x_train[kept[int(np.argmin(dist))]]) == pytest.approx(
                0.01, rel=0.1
            )
    # Held-out parts stay clean; labels relabelled in the order given (bird -> 0).
    np.testing.assert_array_equal(s.x_ntk, clean.x_ntk)
    assert data.CIFAR10_CLASSES[2] == s.classes[0]


def test_digits_default_and_bad_input(key, tmp_path):
    ds = data.load("digits")
    assert ds.x_train.shape == (1797, 8, 8, 1) and ds.x_train.max() == 1.0
    s = data.split(ds, 100, 16, key, n_test=50)
    assert s.x_train.shape == (100, 64) and s.x_train.dtype == np.float32 and s.num_classes == 10
    with pytest.raises(ValueError, match="`dataset`: got 'svhn'"):
        data.load("svhn")
    with pytest.raises(ValueError, match="`data_dir`"):
        data.load("mnist", tmp_path)
    with pytest.raises(ValueError, match="`classes`"):
        data.split(ds, 10, 4, key, classes=["bird", "cat"])
    with pytest.raises(ValueError, match="n_train"):
        data.split(ds, 1790, 16, key)


def test_one_pool_keeps_the_test_set_and_nests_training_sets():
    digits = data.load("digits")
    small, large = (data.split(digits, n, 50, jax.random.key(3), n_test=500) for n in (100, 1000))
    np.testing.assert_array_equal(small.x_test, large.x_test)
    np.testing.assert_array_equal(small.x_ntk, large.x_ntk)
    np.testing.assert_array_equal(small.x_train, large.x_train[:100])
    with pytest.raises(ValueError, match=r"`n_train`: got 1300, expected at most 1247: the 1797 samples"):
        data.split(digits, 1300, 50, jax.random.key(3), n_test=500)
