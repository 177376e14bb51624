"""Datasets of the study and their deterministic subsets.

`load(name, data_dir)` reads a whole dataset into a `Dataset` (images in [0, 1], integer labels):

* ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images), shipped with scikit-learn, so it
  works offline and is the default of the quickstart;
* ``mnist`` / ``fashion_mnist``: IDX files (LeCun et al. 1998; Xiao, Rasul & Vollgraf 2017) in
  ``data_dir/mnist`` or ``data_dir/fashion_mnist``, gzip-compressed or not; the training files are
  optional (a folder holding only the ``t10k`` files is one pool that `split` divides);
* ``cifar10``: the python pickle batches of CIFAR-10 (Krizhevsky 2009) in ``data_dir/cifar10`` (or its
  ``cifar-10-batches-py`` subfolder).

`split(dataset, ...)` draws, from a PRNG key, the training set, a fixed NTK batch from held-out data and
a test set, with optional class subsets (CIFAR-4) and noisy-copy replacement. `download` fetches the
canonical files and checks their published MD5 sums.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
import shutil
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from ntkspec._errors import bad_value
from ntkspec._typing import Key

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10")

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR4_CLASSES = ("bird", "cat", "airplane", "automobile")
FASHION_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(i) for i in range(10))
CLASS_NAMES = {
    "digits": DIGIT_CLASSES,
    "mnist": DIGIT_CLASSES,
    "fashion_mnist": FASHION_CLASSES,
    "cifar10": CIFAR10_CLASSES,
}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Canonical sources and the MD5 sums of the published (compressed) files, as torchvision checks them.
_SOURCES = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/",
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A whole dataset: images (N, H, W, channels) in [0, 1], integer labels in [0, len(classes)).

    `x_test`/`y_test` are None where only one pool of samples exists (digits; MNIST from t10k only).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Split:
    """The samples one run uses: a training set, the NTK batch (held out) and a test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_ntk: np.ndarray
    y_ntk: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed when its name ends in .gz).

    Format: two zero bytes, a type byte (0x08 = unsigned byte, ...), the number of dimensions, then
    each dimension as a big-endian int32, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise bad_value(str(path), f"a file starting with bytes {raw[:4]!r}", "an IDX file")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise bad_value(str(path), f"{data.size} values", f"{int(np.prod(shape))} values for shape {shape}")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_idx(name: str, folder: Path, classes: tuple[str, ...]) -> Dataset:
    pools = {}
    for part, (images, labels) in _IDX_FILES.items():
        image_path, label_path = _find(folder, images), _find(folder, labels)
        if image_path is None or label_path is None:
            continue
        x = read_idx(image_path).astype(np.float32) / 255.0
        y = read_idx(label_path).astype(np.int32)
        if x.shape[0] != y.shape[0]:
            raise bad_value(str(label_path), f"{y.shape[0]} labels", f"{x.shape[0]}, one per image")
        pools[part] = (x[..., None], y)
    if not pools:
        raise bad_value(
            "data_dir",
            f"{str(folder)!r} without {name} files",
            f"a folder with {_IDX_FILES['test'][0]}[.gz] and {_IDX_FILES['test'][1]}[.gz] "
            "(and optionally the train-* files)",
            f"Run `ntkspec.data.download({name!r}, data_dir)` or point --data-dir at the files.",
        )
    if len(pools) == 1:
        (x, y) = next(iter(pools.values()))
        return Dataset(name, x, y, None, None, classes)
    return Dataset(name, *pools["train"], *pools["test"], classes)


def _load_cifar10(folder: Path) -> Dataset:
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"

    def batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
        with open(path, "rb") as stream:
            entries = pickle.load(stream, encoding="bytes")
        data = np.asarray(entries[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        x = data.transpose(0, 2, 3, 1).astype(np.float32) / 255.0
        return x, np.asarray(entries[b"labels"], dtype=np.int32)

    train_paths = sorted(folder.glob("data_batch_*"))
    test_path = folder / "test_batch"
    if not train_paths and not test_path.is_file():
        raise bad_value(
            "data_dir",
            f"{str(folder)!r} without CIFAR-10 batches",
            "a folder with data_batch_1..5 and test_batch (the python version of CIFAR-10)",
            "Run `ntkspec.data.download('cifar10', data_dir)` or point --data-dir at the files.",
        )
    parts = [batch(path) for path in train_paths]
    test = batch(test_path) if test_path.is_file() else None
    if not parts:
        return Dataset("cifar10", *test, None, None, CIFAR10_CLASSES)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    if test is None:
        return Dataset("cifar10", x_train, y_train, None, None, CIFAR10_CLASSES)
    return Dataset("cifar10", x_train, y_train, *test, CIFAR10_CLASSES)


def load(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load dataset `name` (one of `DATASETS`); all but "digits" are read from `data_dir/name`."""
    if name not in DATASETS:
        raise bad_value("dataset", repr(name), f"one of {DATASETS}")
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images.astype(np.float32) / 16.0)[..., None]
        return Dataset("digits", x, digits.target.astype(np.int32), None, None, DIGIT_CLASSES)
    if data_dir is None:
        raise bad_value("data_dir", "None", f"a folder holding {name}/", "Pass --data-dir (or data_dir=...).")
    folder = Path(data_dir).expanduser() / name
    if name == "cifar10":
        return _load_cifar10(folder)
    return _load_idx(name, folder, CLASS_NAMES[name])


def _select_classes(x: np.ndarray, y: np.ndarray, wanted: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isin(y, wanted)
    relabel = np.full(int(y.max(initial=0)) + 1, -1, dtype=np.int32)
    relabel[list(wanted)] = np.arange(len(wanted), dtype=np.int32)
    return x[mask], relabel[y[mask]]


def _class_indices(dataset: Dataset, classes: Sequence[str | int]) -> list[int]:
    indices = []
    for c in classes:
        if isinstance(c, str) and c in dataset.classes:
            indices.append(dataset.classes.index(c))
        elif isinstance(c, int) and 0 <= c < len(dataset.classes):
            indices.append(c)
        else:
            raise bad_value("classes", repr(c), f"a class of {dataset.name}: one of {dataset.classes}")
    if len(set(indices)) != len(indices) or len(indices) < 2:
        raise bad_value("classes", repr(list(classes)), "at least two distinct classes")
    return indices


def noisy_copies(x: np.ndarray, y: np.ndarray, fraction: float, key: Key, std: float = 0.01) -> np.ndarray:
    """Replace `fraction` of each class's samples by noisy copies of other samples of that class.

    In each class of n_c samples, round(fraction * n_c) of them (at least one sample is kept) are
    overwritten by x_j + N(0, std^2) noise, x_j drawn uniformly from the kept samples of that class.
    Labels are unchanged, so the set holds near-duplicates: fewer distinct inputs, same size.
    """
    if not 0.0 <= fraction < 1.0:
        raise bad_value("noise_fraction", fraction, "a fraction in [0, 1)")
    out = np.array(x, copy=True)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_replace = min(int(round(fraction * members.size)), members.size - 1)
        if n_replace == 0:
            continue
        key, k_perm, k_src, k_noise = jax.random.split(key, 4)
        order = members[np.asarray(jax.random.permutation(k_perm, members.size))]
        replaced, kept = order[:n_replace], order[n_replace:]
        sources = kept[np.asarray(jax.random.randint(k_src, (n_replace,), 0, kept.size))]
        noise = np.asarray(jax.random.normal(k_noise, (n_replace, *x.shape[1:])), dtype=x.dtype)
        out[replaced] = x[sources] + std * noise
    return out


def split(
    dataset: Dataset,
    n_train: int,
    n_ntk: int,
    key: Key,
    *,
    n_test: int | None = None,
    classes: Sequence[str | int] | None = None,
    noise_fraction: float = 0.0,
    noise_std: float = 0.01,
    flatten: bool = True,
    dtype: np.dtype | str = np.float32,
) -> Split:
    """Draw one run's samples from `dataset`, deterministically from `key`.

    With a separate test pool, the training set is drawn from the training pool and the NTK batch and
    test set from the test pool; with one pool (digits, MNIST t10k only) a permutation of it gives the
    NTK batch first, then the training set, then the test set. Either way the NTK batch is held out,
    and for one key the training sets of growing `n_train` are nested (first n of one permutation),
    with the NTK batch and test set unchanged: what a data-size sweep needs.

    Parameters
    ----------
    n_train, n_ntk : training set size and NTK batch size.
    key : PRNG key fixing the draw.
    n_test : cap on the test set (all remaining samples by default).
    classes : keep only these classes (names or indices), relabelled 0..len-1 in the order given;
        e.g. `CIFAR4_CLASSES`.
    noise_fraction, noise_std : replace this fraction of each class's training samples by noisy copies
        (see `noisy_copies`).
    flatten : flatten inputs to vectors (MLPs); keep (H, W, channels) images otherwise (CNNs).
    """
    for name, value in (("n_train", n_train), ("n_ntk", n_ntk)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise bad_value(name, repr(value), "a positive integer")
    if n_test is not None and n_test < 1:
        raise bad_value("n_test", repr(n_test), "a positive integer or None (all the rest)")
    pools = [(dataset.x_train, dataset.y_train)]
    if dataset.x_test is not None:
        pools.append((dataset.x_test, dataset.y_test))
    names = dataset.classes
    if classes is not None:
        wanted = _class_indices(dataset, classes)
        pools = [_select_classes(x, y, wanted) for x, y in pools]
        names = tuple(dataset.classes[i] for i in wanted)
    k_train, k_held, k_noise = jax.random.split(key, 3)
    if len(pools) == 1:
        ((x, y),) = pools
        order = np.asarray(jax.random.permutation(k_train, x.shape[0]))
        testing = 1 if n_test is None else n_test
        available = x.shape[0] - n_ntk - testing
        if n_train > available:
            raise bad_value(
                "n_train",
                n_train,
                f"at most {available}: the {x.shape[0]} samples of {dataset.name} less {n_ntk} for the "
                f"NTK batch and {testing} for testing",
                "Lower n_train, n_ntk or n_test.",
            )
        # The NTK batch first and the test set last in the permutation: both stay the same for
        # every n_train, and the training sets of growing n_train are nested.
        ntk_idx, train_idx = order[:n_ntk], order[n_ntk : n_ntk + n_train]
        test_idx = order[n_ntk + n_train :] if n_test is None else order[x.shape[0] - n_test :]
        x_train, y_train, x_held, y_held = x, y, x, y
    else:
        (x_train, y_train), (x_held, y_held) = pools
        if x_train.shape[0] < n_train:
            raise bad_value("n_train", n_train, f"at most the {x_train.shape[0]} training samples available")
        if x_held.shape[0] < n_ntk + 1:
            raise bad_value("n_ntk", n_ntk, f"fewer than the {x_held.shape[0]} held-out samples available")
        train_idx = np.asarray(jax.random.permutation(k_train, x_train.shape[0]))[:n_train]
        held = np.asarray(jax.random.permutation(k_held, x_held.shape[0]))
        ntk_idx, test_idx = held[:n_ntk], held[n_ntk:]
    if n_test is not None:
        test_idx = test_idx[:n_test]
    xs = [np.asarray(x_train[train_idx]), x_held[ntk_idx], x_held[test_idx]]
    if noise_fraction:
        xs[0] = noisy_copies(xs[0], y_train[train_idx], noise_fraction, k_noise, noise_std)
    xs = [a.reshape(a.shape[0], -1) if flatten else a for a in xs]
    xs = [np.asarray(a, dtype=dtype) for a in xs]
    return Split(xs[0], y_train[train_idx], xs[1], y_held[ntk_idx], xs[2], y_held[test_idx], names)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(name: str, data_dir: str | Path) -> Path:
    """Download dataset `name` into `data_dir/name` from its canonical source; check MD5 sums.

    Files already present with the right checksum are kept. A file whose checksum differs is removed
    and an error raised. CIFAR-10's archive is unpacked into `data_dir/cifar10/cifar-10-batches-py`.
    Returns the dataset folder, ready for `load(name, data_dir)`.
    """
    if name not in _SOURCES:
        raise bad_value("name", repr(name), f"one of {tuple(_SOURCES)} (digits needs no download)")
    base, files = _SOURCES[name]
    folder = Path(data_dir).expanduser() / name
    folder.mkdir(parents=True, exist_ok=True)
    for filename, md5 in files.items():
        target = folder / filename
        if not (target.is_file() and _md5(target) == md5):
            partial = target.with_suffix(target.suffix + ".part")
            with urllib.request.urlopen(base + filename) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
            got = _md5(partial)
            if got != md5:
                partial.unlink()
                raise bad_value(
                    f"MD5 of {filename}", got, md5, f"The download from {base} was corrupt; retry."
                )
            partial.replace(target)
        if filename.endswith(".tar.gz"):
            with tarfile.open(target, "r:gz") as archive:
                archive.extractall(folder, filter="data")
    return folder
