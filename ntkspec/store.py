"""The sweep store: one Zarr v3 group per sweep, one subgroup per run, arrays over records.

Layout::

    sweep.zarr/                  attrs: config, versions, ntkspec_version, created
      w64_s0/                    attrs: status, message, n_records, width, depth, seed, dataset, ...
        epoch        (record,)   int64
        train_loss   (record,)   float64    ... one 1-D array per scalar field of `train.Record`
        method       (record,)   string     "exact" or "stochastic"
        top_eigenvalues          (record, k) float64, NaN-padded
        cosine_top_eigenvalues   (record, k) float64

Arrays carry `dimension_names`, so `xarray.open_zarr(path, group="w64_s0", consolidated=False)`
reads a run as a Dataset with dimensions (record, k).

Crash safety (every metadata and chunk write of Zarr's local store is atomic: temporary file, then
rename): a record is appended by growing and writing every array at index r, and only then setting the
run's `n_records` attribute to r + 1; readers trust `n_records` alone. A run is finished only once
its `status` attribute says "complete" or "diverged", written last. A run found unfinished (killed,
"failed", or with unreadable metadata) is deleted and restarted from epoch 0 (no parameter
checkpoints), so a kill can never leave a corrupt or duplicated record. Several processes may write
disjoint runs into one store; creating the root group happens under an exclusive file lock on the
store directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import importlib.metadata
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

import ntkspec
from ntkspec._errors import bad_value
from ntkspec.train import Record

STATUSES = ("running", "complete", "diverged", "failed")
FINISHED = ("complete", "diverged")  # a sweep skips these runs; "running" and "failed" are redone
SCALAR_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Record)
    if f.name not in ("epoch", "method", "top_eigenvalues", "cosine_top_eigenvalues")
)
_VECTOR_FIELDS = ("top_eigenvalues", "cosine_top_eigenvalues")
_CHUNK = 256
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "zarr")


def _versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on `directory` (released when the process dies, too)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value))


def open_store(
    path: str | Path, config: dict, *, ignore: tuple[str, ...] = ("data_dir", "store")
) -> zarr.Group:
    """Open the sweep store at `path`, creating its root group (race-safe) if it does not exist.

    The root's attributes hold `config`, package versions and the creation time. An existing store must
    have been created from the same config (the keys in `ignore` aside): otherwise its runs would mix
    two experiments, and a `ValueError` says which keys differ.
    """
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    config = _jsonable(config)
    with _locked(path):
        if not (path / "zarr.json").is_file():
            return zarr.create_group(
                store=str(path),
                zarr_format=3,
                attributes={
                    "config": config,
                    "versions": _versions(),
                    "ntkspec_version": ntkspec.__version__,
                    "created": datetime.datetime.now(datetime.UTC).isoformat(),
                },
            )
    root = zarr.open_group(str(path), mode="r+", zarr_format=3)
    stored = root.attrs.get("config", {})
    keys = (set(stored) | set(config)) - set(ignore)
    differ = sorted(k for k in keys if stored.get(k) != config.get(k))
    if differ:
        shown = ", ".join(f"{k}: {stored.get(k)!r} there, {config.get(k)!r} now" for k in differ)
        raise bad_value(
            "store",
            f"{str(path)!r}, made by a different config ({shown})",
            "a new store path, or the config that made this store",
            "Pass --store NEW_PATH, or rerun with the same config and overrides.",
        )
    return root


def run_name(kind: str, value: int, seed: int) -> str:
    """Run group name: `w{width}_s{seed}` for width sweeps, `n{size}_s{seed}` for data-size sweeps."""
    prefixes = {"width": "w", "data_size": "n"}
    if kind not in prefixes:
        raise bad_value("kind", repr(kind), f"one of {tuple(prefixes)}")
    return f"{prefixes[kind]}{value}_s{seed}"


def run_status(root: zarr.Group, name: str) -> str | None:
    """Status of run `name`, or None where it is absent or its metadata cannot be read."""
    try:
        group = zarr.open_group(store=root.store, path=name, mode="r", zarr_format=3)
        return group.attrs.get("status")
    except (OSError, ValueError):  # absent, or metadata left unreadable
        return None


def list_runs(path: str | Path) -> list[str]:
    """Names of the run groups in the store at `path` (sorted)."""
    path = Path(path)
    return sorted(p.parent.name for p in path.glob("*/zarr.json"))


class RunWriter:
    """Writes one run: `append` records, then `finish` with the final status.

    Creating a writer deletes whatever an earlier, incomplete attempt left under the run's name.
    """

    def __init__(self, root: zarr.Group, name: str, attrs: dict, top_k: int):
        directory = Path(str(root.store.root)) / root.path / name
        shutil.rmtree(directory, ignore_errors=True)
        self.top_k = top_k
        self.group = root.create_group(
            name, attributes=_jsonable({**attrs, "status": "running", "message": "", "n_records": 0})
        )
        self.n_records = 0
        self.arrays = {}
        for field in ("epoch", *SCALAR_FIELDS):
            self.arrays[field] = self.group.create_array(
                field,
                shape=(0,),
                chunks=(_CHUNK,),
                dtype="int64" if field == "epoch" else "float64",
                fill_value=0 if field == "epoch" else np.nan,
                dimension_names=["record"],
            )
        self.arrays["method"] = self.group.create_array(
            "method", shape=(0,), chunks=(_CHUNK,), dtype=str, dimension_names=["record"]
        )
        for field in _VECTOR_FIELDS:
            self.arrays[field] = self.group.create_array(
                field,
                shape=(0, top_k),
                chunks=(_CHUNK, top_k),
                dtype="float64",
                fill_value=np.nan,
                dimension_names=["record", "k"],
            )

    def append(self, record: Record) -> None:
        """Write `record` at index n_records in every array, then bump `n_records` (last)."""
        r = self.n_records
        for field, array in self.arrays.items():
            value = getattr(record, field)
            array.resize((r + 1, *array.shape[1:]))
            array[r] = value
        self.n_records = r + 1
        self.group.update_attributes({"n_records": self.n_records})

    def finish(self, status: str, message: str = "") -> None:
        """Mark the run `status` ("complete", "diverged" or "failed") with `message`: its last write."""
        if status not in STATUSES[1:]:
            raise bad_value("status", repr(status), f"one of {STATUSES[1:]}")
        self.group.update_attributes({"status": status, "message": message})


def read_run(path: str | Path, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Attributes and arrays (first `n_records` records only) of run `name` in the store at `path`."""
    group = zarr.open_group(str(path), path=name, mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    n = int(attrs.get("n_records", 0))
    return attrs, {key: np.asarray(array[:n]) for key, array in group.arrays()}
