"""The sweep store: the only module that knows the Zarr layout. Writer, reader and `open_sweep`.

Layout (Zarr v3)::

    sweep.zarr/                  attrs: config, versions, ntkspec_version, created
      .locks/                    one lock file per run (`filelock`), and one for creating the root
      _calibration/w64/          attrs: the learning-rate calibration of a swept value
      _checkpoints/w64_s0-4/     attrs: latest; the latest checkpoint of an ensemble in training
      _checkpoints/w64_pilot_lr0.001/  likewise, of a calibration's pilot in training
        epoch373/                attrs: epoch, messages; one array per `checkpoint.EnsembleState` name
      w64_s0/                    attrs: status, message, n_records, arrays (the record arrays it
                                 holds) and `records.RUN_FIELDS`
        epoch        (record,)   int64
        train_loss   (record,)   float64    ... one 1-D array per scalar field of `records.Record`
        method       (record,)   string     "exact" or "stochastic"
        top_eigenvalues          (record, k) float64, NaN-padded
        cosine_top_eigenvalues   (record, k) float64
        at_min/                  the record at the minimum test loss (one entry per array)
        trajectory/              attrs: n_steps; epoch, train_loss, test_loss, trace (step,)
        kernels/                 attrs: n_kernels; data-size sweeps with config `kernels` only
          kernel     (kernel,)   string     "init", "pretrained", ... (`records.KERNELS`)
          test_mse, test_error, rho, ridge, residual, seconds   (kernel,) float64
          method, status         (kernel,) string   (see `against_kernels`)

Every chunk is Zstandard-compressed and carries a CRC32C checksum (Zarr v3's `crc32c` codec), so a
chunk changed on disk (a bad sector, a partial copy) is detected when read instead of being decoded
into wrong numbers; a chunk that is missing is detected from the store's listing (Zarr would read it
as fill values). `read_run` raises `CorruptRunError` naming the run and the array; `open_sweep` marks
such a run "unreadable" and goes on; a sweep reruns it. Stores written before checksums existed read
as before (their codecs are in their metadata). A run lists the record arrays it was written with
(`arrays`) and must hold them all; a checksummed run written before that list existed may lack the
fields added since (`_ADDED_ARRAYS`), which `open_sweep` then reads as NaN (or leaves out).

Crash safety (every metadata and chunk write of Zarr's local store is atomic: temporary file, then
rename): a record is appended by growing and writing every array at index r, and only then setting the
run's `n_records` attribute to r + 1; readers trust `n_records` alone. A run is finished only once its
`status` says "complete" or "diverged", written last and only after every record read back equal to
what was written. A run is owned by one process at a time: `claim` takes its lock without waiting, so
a second process on the same store skips the runs another one holds. An unfinished run (killed,
"failed", unreadable) is deleted and restarted from epoch 0 by its next owner, unless it was left
"running" with a checkpoint of its ensemble (`write_checkpoint`): its training then goes on from
there, its records up to that epoch kept.

Committed stores are packed into one Zip file per sweep (`pack`: `sweep.zarr.zip`, chunks stored
uncompressed in the archive since they are compressed already): a `git clone` then handles one file
instead of thousands. `read_run`, `list_runs` and `open_sweep` read a `.zarr.zip` as they read a folder.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import math
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import filelock
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

import ntkspec
from ntkspec._errors import bad_value
from ntkspec.experiments.checkpoint import EnsembleState
from ntkspec.experiments.config import SweepConfig, runs
from ntkspec.experiments.records import FINISHED, SCALAR_FIELDS, STATUSES, VECTOR_FIELDS, Record, kind

_CHUNK = 256
_COMPRESSORS = (ZstdCodec(level=3), Crc32cCodec())
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "zarr", "xarray")
_LOCKS = ".locks"
_CALIBRATION = "_calibration"  # one subgroup per swept value: its learning-rate calibration
_CHECKPOINTS = "_checkpoints"  # one subgroup per ensemble in training: its latest checkpoint
#: Runs written with checksums and every chunk stored (even all-fill ones) say `layout: 2`; earlier
#: runs have no checksums, and a chunk of theirs that is absent may just have been all fill values.
LAYOUT = 2


class CorruptRunError(ValueError):
    """A run whose metadata or chunks cannot be read back as written (checksum, missing chunk)."""


def _versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def _jsonable(value: object) -> object:
    return json.loads(json.dumps(value))


def _lock(path: Path, name: str) -> filelock.FileLock:
    folder = path / _LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(folder / f"{name}.lock")


def open_store(
    path: str | Path,
    config: dict,
    *,
    ignore: tuple[str, ...] = ("data_dir", "store", "ensemble", "checkpoint_every"),
) -> zarr.Group:
    """Open the sweep store at `path`, creating its root group (race-safe) if it does not exist.

    The root's attributes hold `config`, package versions and the creation time. An existing store must
    have been created from the same config (the keys in `ignore` aside: where the data and the store
    are, and whether seeds train as one ensemble, none of which changes the numbers): otherwise its
    runs would mix two experiments, and a `ValueError` says which keys differ. The changes allowed
    are more `seeds` and more swept values (widths, data sizes or noise fractions, the old ones
    among the new): both add independent runs, so the store grows to the new config, its finished
    runs kept (`_grown`).
    """
    path = Path(path).expanduser()
    if zipfile.is_zipfile(path):
        raise bad_value(
            "store",
            f"{str(path)!r}, a packed (read-only) store",
            "a store folder to write runs into",
            "To go on with it, unpack it into a folder and pass that: "
            f"python -m zipfile -e {path} runs/{stem(path)}.zarr",
        )
    path.mkdir(parents=True, exist_ok=True)
    config = _jsonable(config)
    with _lock(path, "root"):
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
        grown = _grown(stored, config, differ)
        if grown is not None:  # read and grown under the lock
            root.attrs["config"] = grown
            differ = []
    if differ:
        shown = ", ".join(f"{k}: {stored.get(k)!r} there, {config.get(k)!r} now" for k in differ)
        raise bad_value(
            "store",
            f"{str(path)!r}, made by a different config ({shown})",
            "a new store path, or the config that made this store",
            "Pass --store NEW_PATH, or rerun with the same config and overrides.",
        )
    return root


def _grown(stored: dict, config: dict, differ: list[str]) -> dict | None:
    """The stored config grown to `config` where they differ (`differ`) only by more seeds and by
    swept values that include the stored ones; else None."""
    field = kind(stored.get("kind", "width")).field
    if not differ or not set(differ) <= {"seeds", field}:
        return None
    if config["seeds"] < stored["seeds"] or not set(stored[field]) <= set(config[field]):
        return None
    return {**stored, "seeds": config["seeds"], field: config[field]}


@contextlib.contextmanager
def claim(path: str | Path, name: str, *, wait: bool = False) -> Iterator[bool]:
    """Own `name` (a run, or a calibration) of the store at `path` for the block: yields False if
    another process holds it, or, with `wait`, waits until it is free.

    The lock is an OS file lock (`filelock`), released when the block ends or the process dies.
    """
    lock = _lock(Path(path), name)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def run_status(root: zarr.Group, name: str) -> str | None:
    """Status of run `name`, or None where it is absent or its metadata cannot be read."""
    try:
        group = zarr.open_group(store=root.store, path=name, mode="r", zarr_format=3)
        return group.attrs.get("status")
    except (OSError, ValueError):  # absent, or metadata left unreadable
        return None


def _keys(path: Path, under: str = "") -> set[str]:
    """The keys (files) of the store at `path`, a folder or a packed `.zarr.zip`, below `under`."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return {key for key in archive.namelist() if key.startswith(under)}
    return {str(p.relative_to(path)) for p in (path / under).rglob("*") if p.is_file()}


def _zarr_store(path: Path):
    return zarr.storage.ZipStore(path, mode="r") if zipfile.is_zipfile(path) else str(path)


def list_runs(path: str | Path) -> list[str]:
    """Names of the run groups in the store at `path` (sorted)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        names = [
            key.split("/")[0] for key in _keys(path) if key.count("/") == 1 and key.endswith("/zarr.json")
        ]
    else:
        names = [p.parent.name for p in path.glob("*/zarr.json")]
    return sorted(name for name in names if not name.startswith("_"))  # "_calibration" is no run


class _Records:
    """The record arrays of one group (a run's records, or its one record at the minimum)."""

    def __init__(self, group: zarr.Group, top_k: int, kept: dict[str, np.ndarray] | None = None):
        """Fresh arrays, or (`kept`: the first records of the group's arrays, as read) its arrays
        cut to those records."""
        self.group = group
        if kept is not None:
            self.arrays = {field: group[field] for field in _RECORD_ARRAYS}
            self.written = {field: list(values) for field, values in kept.items()}
            for field, array in self.arrays.items():
                array.resize((len(kept[field]), *array.shape[1:]))
            return
        self.written: dict[str, list] = {}
        self.arrays = {"epoch": _create(group, "epoch", (0,), "int64")}
        self.arrays |= {field: _create(group, field, (0,), "float64") for field in SCALAR_FIELDS}
        self.arrays["method"] = _create(group, "method", (0,), str)
        self.arrays |= {field: _create(group, field, (0, top_k), "float64") for field in VECTOR_FIELDS}

    def append(self, record: Record) -> int:
        """Write `record` at the next index of every array; the number of records now."""
        r = len(self.written.get("epoch", []))
        for field, array in self.arrays.items():
            value = getattr(record, field)
            array.resize((r + 1, *array.shape[1:]))
            array[r] = value
            self.written.setdefault(field, []).append(value)
        return r + 1


def _create(group: zarr.Group, field: str, shape: tuple[int, ...], dtype, dims=("record", "k")) -> zarr.Array:
    fill = {"int64": 0, "float64": np.nan}.get(dtype, "")
    return group.create_array(
        field,
        shape=shape,
        chunks=(_CHUNK, *shape[1:]),
        dtype=dtype,
        fill_value=fill,
        compressors=_COMPRESSORS,
        config={"write_empty_chunks": True},  # every chunk on disk, so a missing one is a loss
        dimension_names=list(dims[: len(shape)]),
    )


class RunWriter:
    """Writes one run: `append` records, `outcome` (the minimum and the trajectory), then `finish`.

    Creating a writer deletes whatever an earlier, incomplete attempt left under the run's name, or,
    with `n_kept` > 0 (a training resumed from a checkpoint, `write_checkpoint`), keeps its first
    `n_kept` records and drops the rest (`CorruptRunError` if they do not read back); the caller
    must own the run (`claim`). Besides its records, a run holds two subgroups: `at_min`, the
    one record measured at the epoch of the minimum test loss, and `trajectory`, the losses and the
    trace every few epochs (dimension `step`); the run's attributes say `min_test_loss_epoch`,
    `min_test_loss` and `stopped_epoch`.
    """

    def __init__(self, root: zarr.Group, name: str, attrs: dict, top_k: int, n_kept: int = 0):
        self.path = Path(str(root.store.root)) / root.path
        self.name = name
        self.top_k = top_k
        self.minimum: _Records | None = None
        self.trajectory: dict[str, np.ndarray] = {}
        self.kernel_results: dict[str, np.ndarray] = {}
        if n_kept:
            stored, arrays = read_run(self.path, name)
            if stored.get("status") != "running" or stored.get("n_records", 0) < n_kept:
                raise CorruptRunError(
                    f"run {name!r}: {stored.get('status')!r} with {stored.get('n_records', 0)} records, "
                    f"not 'running' with {n_kept} or more to keep; rerun the sweep"
                )
            for part in ("at_min", "trajectory", "kernels"):  # an outcome cut short by the kill
                shutil.rmtree(self.path / name / part, ignore_errors=True)
            self.group = zarr.open_group(store=root.store, path=name, mode="r+", zarr_format=3)
            self.group.update_attributes({"n_records": n_kept})  # first: readers trust it alone
            kept = {field: arrays[field][:n_kept] for field in _RECORD_ARRAYS}
            self.records = _Records(self.group, top_k, kept)
            return
        shutil.rmtree(self.path / name, ignore_errors=True)
        self.group = root.create_group(
            name,
            attributes=_jsonable(
                {
                    **attrs,
                    "status": "running",
                    "message": "",
                    "n_records": 0,
                    "layout": LAYOUT,
                    "arrays": sorted(_RECORD_ARRAYS),
                }
            ),
        )
        self.records = _Records(self.group, top_k)

    @property
    def n_records(self) -> int:
        return len(self.records.written.get("epoch", []))

    def append(self, record: Record) -> None:
        """Write `record` at index n_records in every array, then bump `n_records` (last)."""
        self.group.update_attributes({"n_records": self.records.append(record)})

    def outcome(
        self, min_epoch: int, min_test_loss: float, stopped: int, minimum: Record | None, trajectory: dict
    ) -> None:
        """Write the record at the minimum test loss, the trajectory and their attributes."""
        if minimum is not None:
            self.minimum = _Records(self.group.create_group("at_min"), self.top_k)
            self.minimum.append(minimum)
        group = self.group.create_group(
            "trajectory", attributes={"n_steps": len(trajectory.get("epoch", []))}
        )
        for field, values in trajectory.items():
            values = np.asarray(values)
            _create(group, field, values.shape, str(values.dtype), dims=("step",))[:] = values
        self.trajectory = {field: np.asarray(values) for field, values in trajectory.items()}
        self.group.update_attributes(
            {
                "min_test_loss_epoch": int(min_epoch),
                "min_test_loss": float(min_test_loss),
                "stopped_epoch": int(stopped),
            }
        )

    def kernels(self, results: dict[str, np.ndarray]) -> None:
        """Write the kernel regressions of the run (`against_kernels.evaluate`): arrays over `kernel`."""
        group = self.group.create_group("kernels", attributes={"n_kernels": len(results["kernel"])})
        for field, values in results.items():
            values = np.asarray(values)
            dtype = str if values.dtype.kind in "OUT" else str(values.dtype)
            _create(group, field, values.shape, dtype, dims=("kernel",))[:] = values
        self.kernel_results = {field: np.asarray(values) for field, values in results.items()}

    def finish(self, status: str, message: str = "") -> None:
        """Mark the run `status` (a finished one, or "failed") with `message`: its last write.

        A finished status is written only once every array reads back equal to what was written;
        otherwise `CorruptRunError` is raised and the run stays unfinished.
        """
        if status not in STATUSES[1:]:
            raise bad_value("status", repr(status), f"one of {STATUSES[1:]}")
        if status in FINISHED:
            attrs, arrays, parts = read_whole(self.path, self.name)
            written = {
                "": (arrays, self.records.written),
                "at_min/": (parts.get("at_min", {}), self.minimum.written if self.minimum else {}),
                "trajectory/": (parts.get("trajectory", {}), self.trajectory),
                "kernels/": (parts.get("kernels", {}), self.kernel_results),
            }
            for prefix, (stored, expected_arrays) in written.items():
                for field, values in expected_arrays.items():
                    expected = np.asarray(values)
                    got = stored.get(field)
                    if (
                        got is None
                        or got.shape != expected.shape
                        or not np.array_equal(
                            got.astype(expected.dtype), expected, equal_nan=expected.dtype.kind == "f"
                        )
                    ):
                        raise CorruptRunError(
                            f"run {self.name!r}: array {prefix + field!r} did not read back as written; "
                            "check the disk, then rerun the sweep"
                        )
            if attrs["n_records"] != self.n_records:
                raise CorruptRunError(
                    f"run {self.name!r}: {attrs['n_records']} records stored, not {self.n_records}"
                )
        self.group.update_attributes({"status": status, "message": message})


_RECORD_ARRAYS = frozenset({"epoch", "method", *SCALAR_FIELDS, *VECTOR_FIELDS})
#: Record arrays added after runs began to be written with checksums but before a run listed the
#: record arrays it holds (its attribute `arrays`): such an older run may lack them (NaN in
#: `open_sweep`); a run that lists its arrays must hold every one.
_ADDED_ARRAYS = frozenset(
    {
        "kernel_velocity",
        "kernel_velocity_stderr",
        "infinite_distance",
        "infinite_distance_stderr",
        "infinite_alignment",
        "infinite_alignment_stderr",
        "regression_error",
        "regression_mse",
    }
)


def _required(attrs: dict) -> frozenset[str]:
    """The record arrays a checksummed run must hold: those it lists, else the older set."""
    return frozenset(attrs["arrays"]) if "arrays" in attrs else _RECORD_ARRAYS - _ADDED_ARRAYS


def read_run(path: str | Path, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Attributes and record arrays (first `n_records` records only) of run `name` at `path`.

    Raises `CorruptRunError`, naming the run and the array, when its metadata cannot be read, a chunk
    fails its checksum or does not decompress, or a chunk holding valid records is missing.
    """
    attrs, arrays, _ = _read(Path(path), name, ())
    return attrs, arrays


def read_whole(path: str | Path, name: str) -> tuple[dict, dict[str, np.ndarray], dict[str, dict]]:
    """`read_run`'s attributes and records, and the run's parts (those it has): the `at_min`
    record, the `trajectory` and the `kernels`, checked alike; the run's metadata read once."""
    return _read(Path(path), name, ("at_min", "trajectory", "kernels"))


def _read(path: Path, name: str, parts: tuple[str, ...]):
    attrs, members = _open(path, name, name)
    keys = _keys(path, f"{name}/") if attrs.get("layout", 1) >= LAYOUT else None
    required = _required(attrs) if keys is not None else frozenset()
    arrays = _read_arrays(name, name, members, int(attrs.get("n_records", 0)), keys, required)
    found = {}
    for part in parts:
        if keys is not None and f"{name}/{part}/zarr.json" not in keys:
            continue
        try:
            part_attrs, part_members = _open(path, f"{name}/{part}", name)
        except CorruptRunError:
            if keys is None:  # an older run without this part
                continue
            raise
        n = int(part_attrs.get("n_steps", part_attrs.get("n_kernels", 1)))
        needed = required if part == "at_min" else frozenset()
        found[part] = _read_arrays(name, f"{name}/{part}", part_members, n, keys, needed)
    return attrs, arrays, found


def _open(path: Path, group_path: str, name: str) -> tuple[dict, list]:
    try:
        group = zarr.open_group(_zarr_store(path), path=group_path, mode="r", zarr_format=3)
        return dict(group.attrs), list(group.arrays())
    except (OSError, ValueError, KeyError) as error:
        raise CorruptRunError(
            f"run {name!r}: metadata of {group_path!r} unreadable ({type(error).__name__}: {error})"
        ) from error


def _read_arrays(name: str, group_path: str, members: list, n: int, keys, required) -> dict[str, np.ndarray]:
    """The first `n` entries of every array, each chunk checked: present (where `keys` lists the
    store's files) and decoding (checksum)."""
    lost = sorted(required - {field for field, _ in members})
    if lost:
        raise CorruptRunError(f"run {name!r}: array {lost[0]!r} is missing; rerun the sweep")
    arrays = {}
    for field, array in members:
        count = min(max(n, 0), array.shape[0])
        grid = [math.ceil(count / array.chunks[0])]
        grid += [math.ceil(s / c) for s, c in zip(array.shape[1:], array.chunks[1:], strict=True)]
        for coords in np.ndindex(*grid):
            key = f"{group_path}/{field}/{array.metadata.encode_chunk_key(coords)}"
            if keys is not None and key not in keys:
                raise CorruptRunError(
                    f"run {name!r}: array {field!r} lost its chunk {key!r}; rerun the sweep"
                )
        try:
            arrays[field] = np.asarray(array[:count])
        except (RuntimeError, ValueError, OSError) as error:
            raise CorruptRunError(
                f"run {name!r}: array {field!r} is corrupt ({type(error).__name__}: {error}); rerun the sweep"
            ) from error
    return arrays


def read_calibration(path: str | Path, point: str) -> dict | None:
    """The stored calibration of swept value `point` (e.g. "w64"), or None if there is none yet."""
    try:
        group = zarr.open_group(
            _zarr_store(Path(path)), path=f"{_CALIBRATION}/{point}", mode="r", zarr_format=3
        )
    except (OSError, ValueError, KeyError, FileNotFoundError):
        return None
    return dict(group.attrs)


def write_calibration(root: zarr.Group, point: str, result: dict) -> None:
    """Store the calibration of `point`: status, chosen `lr`, every pilot (lr, epoch of the minimum)."""
    root.require_group(_CALIBRATION).create_group(point, attributes=_jsonable(result), overwrite=True)


def write_checkpoint(root: zarr.Group, key: str, state: EnsembleState) -> None:
    """Keep `state` as the checkpoint of the ensemble `key` (e.g. "w64_s0-4"), replacing the last.

    Written whole under `_checkpoints/{key}/epoch{epoch}` (an array per name, "/" written ".",
    checksummed), then named the latest in `_checkpoints/{key}`'s attributes (one atomic write),
    then the older one deleted: a kill at any moment leaves one whole checkpoint or none.
    """
    group = root.require_group(_CHECKPOINTS).require_group(key)
    name = f"epoch{state.epoch}"
    folder = Path(str(root.store.root)) / root.path / _CHECKPOINTS / key
    shutil.rmtree(folder / name, ignore_errors=True)
    written = group.create_group(name, attributes={"epoch": state.epoch, "messages": list(state.messages)})
    for field, values in state.arrays.items():
        values = np.asarray(values)
        array = written.create_array(
            field.replace("/", "."), shape=values.shape, dtype=values.dtype, compressors=(Crc32cCodec(),)
        )
        array[...] = values
    group.update_attributes({"latest": name})
    for older in folder.iterdir():
        if older.is_dir() and older.name != name:
            shutil.rmtree(older)


def read_checkpoint(path: str | Path, key: str) -> EnsembleState | None:
    """The latest checkpoint of the ensemble `key` (`write_checkpoint`), or None if there is none or
    it does not read back whole (a training then starts again from epoch 0)."""
    try:
        group = zarr.open_group(str(path), path=f"{_CHECKPOINTS}/{key}", mode="r", zarr_format=3)
        written = group[group.attrs["latest"]]
        arrays = {field.replace(".", "/"): np.asarray(array[...]) for field, array in written.arrays()}
        return EnsembleState(int(written.attrs["epoch"]), arrays, tuple(written.attrs["messages"]))
    except (OSError, ValueError, KeyError, RuntimeError):
        return None


def delete_checkpoint(root: zarr.Group, key: str) -> None:
    """Delete the checkpoints of the ensemble `key` (its training has ended)."""
    shutil.rmtree(Path(str(root.store.root)) / root.path / _CHECKPOINTS / key, ignore_errors=True)


def verify(path: str | Path, name: str) -> str | None:
    """None if run `name` reads back whole, else what is wrong with it."""
    try:
        read_whole(path, name)
    except CorruptRunError as error:
        return str(error)
    return None


def pack(path: str | Path, out: str | Path | None = None) -> tuple[Path, tuple[str, ...]]:
    """Write the store folder at `path` as one Zip file (default `<path>.zip`): its path, and the
    names of the runs left out.

    Runs with status "running" are left out, and the checkpoints of their ensembles: they are
    training now, or were left so by a killed process; the folder goes on from its checkpoints,
    a copy unpacked from the Zip file trains them again from epoch 0. A live sweep can so be
    packed at any time (its finished runs are never written again), e.g. to commit what it has
    finished before the machine goes away. Every other run must read back whole (a corrupt one
    raises `CorruptRunError`); locks are left out. The file is written beside `out` and then
    renamed over it, so an interrupted pack leaves an earlier `out` as it was.
    """
    path = Path(path)
    out = Path(out) if out is not None else path.with_name(path.name + ".zip")
    root = zarr.open_group(store=str(path), mode="r", zarr_format=3)
    names = list_runs(path)
    left_out = tuple(name for name in names if run_status(root, name) == "running")
    for name in names:
        if name not in left_out:
            read_whole(path, name)
    skipped = (_LOCKS + "/", _CHECKPOINTS + "/", *(f"{name}/" for name in left_out))
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(_keys(path)):
            if not key.startswith(skipped):
                archive.write(path / key, key)
    partial.replace(out)
    return out, left_out


# ---------------------------------------------------------------------------------- open_sweep


def open_sweep(path: str | Path) -> xr.Dataset:
    """The whole sweep at `path` (a store folder or a packed `.zarr.zip`) as one `xarray.Dataset`.

    Dimensions: the swept quantity (`width`, `data_size` or `noise_fraction`), `seed`, `record`, and
    `k` for the top eigenvalues. Per-record variables (every `Record` field) are NaN-padded beyond a
    run's `n_records` and where a (value, seed) has no run; `epoch` is a coordinate over (value, seed,
    record). Per-run variables over (value, seed): `name`, `status` ("missing" where there is no run;
    "unreadable" where a chunk is corrupt or missing, with the reason in `message`), `message`,
    `n_records`, the run attributes (`lr`, `depth`, `n_train`, `min_test_loss`, `min_test_loss_epoch`,
    `stopped_epoch`, ...) and the record measured at the minimum test loss, `<field>_at_min` (its top
    eigenvalues over `k`). The kernel regressions of a sweep with `kernels` are `kernel_<field>`
    (`test_mse`, `test_error`, `rho`, `ridge`, `residual`, `seconds`, `method`, `status`) over (value, seed,
    `kernel`), with the coordinate `kernel` (names in the config's order). The trajectory (losses
    and trace every few epochs) is `trajectory_<field>`
    over (value, seed, `step`), with the coordinate `trajectory_epoch`. Attributes: the store's
    (`config`, `versions`, `created`, ...), `kind`, `path`, `expected_runs` (what the config asks for,
    None if it cannot say) and `unreadable` (run name -> reason, for runs that could not be placed
    because their metadata is unreadable).
    """
    path = Path(path)
    if not path.exists():
        raise bad_value("path", str(path), "an existing Zarr store written by a sweep")
    root = zarr.open_group(_zarr_store(path), mode="r")
    attrs = dict(root.attrs)
    config = dict(attrs.get("config", {}))
    try:
        swept = kind(config.get("kind"))
    except ValueError as error:
        raise bad_value(
            "config['kind'] of the store",
            repr(config.get("kind")),
            "one of width, data_size, noise",
            "Was the store written by `ntkspec sweep`?",
        ) from error
    found, unreadable = {}, {}
    for name in list_runs(path):
        try:
            run_attrs, records, parts = read_whole(path, name)
            found[name] = (run_attrs, {"record": records, **parts})
        except CorruptRunError as error:
            try:
                group = zarr.open_group(_zarr_store(path), path=name, mode="r", zarr_format=3)
                run_attrs = {**group.attrs, "status": "unreadable", "message": str(error), "n_records": 0}
                found[name] = (run_attrs, {})
            except (OSError, ValueError, KeyError):
                unreadable[name] = str(error)
    for name, (run_attrs, _) in list(found.items()):
        if swept.attribute not in run_attrs or "seed" not in run_attrs:
            unreadable[name] = f"run {name!r}: attributes lack {swept.attribute!r} or 'seed'"
            del found[name]
    values = sorted({float(a[swept.attribute]) for a, _ in found.values()})
    seeds = sorted({int(a["seed"]) for a, _ in found.values()})
    data = _grid(found, swept, values, seeds)
    coords = {swept.dim: _plain(values), "seed": np.asarray(seeds, dtype=np.int64)}
    dataset = xr.Dataset(data, coords=coords)
    dataset = dataset.set_coords([name for name in ("epoch", "trajectory_epoch") if name in data])
    dataset.attrs = {
        **attrs,
        "kind": swept.name,
        "path": str(path),
        "expected_runs": _expected_runs(config),
        "unreadable": unreadable,
    }
    return dataset


def _plain(values: list[float]) -> np.ndarray:
    """Integers as int64 (widths, sizes), fractions as float64."""
    array = np.asarray(values, dtype=np.float64)
    return array.astype(np.int64) if np.all(array == np.round(array)) and array.size else array


def _grid(found: dict, swept, values: list[float], seeds: list[int]) -> dict:
    """Data variables over (swept value, seed[, record or step[, k]]) from the runs read."""
    attribute, reserved = swept.attribute, {"name", "status", "message", "n_records", "seed", swept.dim}
    shape = (len(values), len(seeds))
    per_run: dict[str, np.ndarray] = {"name": np.full(shape, "", dtype=object)}
    per_run["status"] = np.full(shape, "missing", dtype=object)
    per_run["message"] = np.full(shape, "", dtype=object)
    per_run["n_records"] = np.zeros(shape, dtype=np.int64)
    series: dict[str, list] = {}  # variable -> [(cell, values, dims)]
    kernel_names: list[str] = []  # the same kernels, in the config's order, in every run
    for name, (run_attrs, parts) in sorted(found.items()):
        cell = (values.index(float(run_attrs[attribute])), seeds.index(int(run_attrs["seed"])))
        per_run["name"][cell] = name
        per_run["status"][cell] = str(run_attrs.get("status", "unknown"))
        per_run["message"][cell] = str(run_attrs.get("message", ""))
        per_run["n_records"][cell] = int(run_attrs.get("n_records", 0)) if parts else 0
        for key, value in run_attrs.items():
            if key in reserved or isinstance(value, list | dict) or value is None:
                continue
            if key not in per_run:
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                per_run[key] = np.full(
                    shape, np.nan if numeric else "", dtype=np.float64 if numeric else object
                )
            per_run[key][cell] = value
        for part, arrays in parts.items():
            for field, array in arrays.items():
                if part == "record":
                    series.setdefault(field, []).append((cell, array, ("record", "k")))
                elif part == "at_min":
                    series.setdefault(f"{field}_at_min", []).append((cell, array[0], ("k",)))
                elif part == "kernels" and field == "kernel":
                    kernel_names = kernel_names or [str(name) for name in array]
                elif part == "kernels":
                    series.setdefault(f"kernel_{field}", []).append((cell, array, ("kernel",)))
                else:
                    series.setdefault(f"trajectory_{field}", []).append((cell, array, ("step",)))
    for key, value in per_run.items():  # integer attributes stay integers where every run has them
        if value.dtype == np.float64 and np.all(np.isfinite(value)) and np.all(value == np.round(value)):
            per_run[key] = value.astype(np.int64)
    data = {key: ((swept.dim, "seed"), value) for key, value in per_run.items()}
    lengths = {"record": 0, "step": 0}
    for entries in series.values():
        for _, array, dims in entries:
            if dims[0] in lengths:
                lengths[dims[0]] = max(lengths[dims[0]], np.shape(array)[0])
    for variable, entries in series.items():
        _, first, dims = entries[0]
        first = np.asarray(first)
        dims = dims[: first.ndim]
        size = tuple(lengths.get(d, first.shape[i]) for i, d in enumerate(dims))
        text = first.dtype.kind in "OUT"
        stacked = np.full((*shape, *size), "" if text else np.nan, dtype=object if text else np.float64)
        for cell, array, _ in entries:
            array = np.asarray(array)
            stacked[cell + tuple(slice(0, n) for n in array.shape)] = array
        data[variable] = ((swept.dim, "seed", *dims), stacked)
    if kernel_names:  # the coordinate of the kernel regressions' variables
        data["kernel"] = (("kernel",), np.asarray(kernel_names, dtype=object))
    return data


def _expected_runs(config: dict) -> int | None:
    """How many runs the stored config asks for (None where it is not a whole sweep config)."""
    try:
        return len(runs(SweepConfig.from_dict(config)))
    except (ValueError, TypeError):
        return None


def stem(path: str | Path) -> str:
    """The sweep's name from its store path: `mnist-depth3` for `mnist-depth3.zarr` or `.zarr.zip`."""
    return Path(path).name.removesuffix(".zip").removesuffix(".zarr")
