import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import zarr  # noqa: E402

from ntkspec.experiments import config as cfg  # noqa: E402
from ntkspec.experiments import store, sweep, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_sweep_child.py")

TINY = """
name = "tiny"
kind = "width"
dataset = "digits"
depth = 3
widths = [8]
seeds = 4
n_train = 20
n_ntk = 4
n_test = 20
optimizer = "adam"
lr = 0.01
epochs = 12
n_records = 4
spacing = "linear"
top_k = 3
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _expected_records(config):
    return len(train.record_epochs(config.epochs, config.n_records, config.spacing))


def _check_complete(path, config):
    """Every run complete, with exactly the expected records, epochs strictly increasing."""
    expected = _expected_records(config)
    names = [run.name for run in cfg.runs(config)]
    assert store.list_runs(path) == sorted(names)
    out = {}
    for name in names:
        attrs, arrays = store.read_run(path, name)
        assert attrs["status"] == "complete", (name, attrs)
        assert attrs["n_records"] == expected
        assert all(a.shape[0] == expected for a in arrays.values())  # nothing beyond n_records
        group = zarr.open_group(str(path), path=name, mode="r")
        assert all(a.shape[0] == expected for _, a in group.arrays())
        assert np.all(np.diff(arrays["epoch"]) > 0) and arrays["epoch"][-1] == config.epochs
        out[name] = arrays
    return out


def _spawn(config_path, store_path, task):
    # The environment carries conftest's compilation cache: restarted children do not recompile.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(config_path), str(store_path), task],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process):
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    return out


def test_config_validation_names_the_field(tiny_config):
    config = cfg.load_config(tiny_config)
    assert config.widths == (8,) and config.n_test == 20 and config.lr == 0.01
    cases = {
        "widths": ({"widths": [8, -1]}, "`widths`: got [8, -1]"),
        "kind": ({"kind": "depth"}, "`kind`: got 'depth', expected one of ('width'"),
        "lr": ({"lr": "fast"}, "`lr`: got 'fast' (str), expected a value of type float"),
        "seeds": ({"seeds": 0}, "`seeds`: got 0, expected a positive integer"),
        "unknown": ({"widht": [8]}, "config field 'widht'"),
        "data_sizes": ({"kind": "data_size", "widths": [8]}, "`data_sizes`: got []"),
        "single width": ({"kind": "data_size", "data_sizes": [10], "widths": [4, 8]}, "one width"),
        "dataset": ({"dataset": "svhn"}, "`dataset`: got 'svhn'"),
        "b1": ({"b1": 1.5}, "`b1`: got 1.5, expected a number in [0, 1)"),
        "bool as int": ({"depth": True}, "`depth`: got True (bool)"),
        "classes": ({"classes": ["bird", "cat"]}, "`classes`: got ['bird', 'cat'], expected two or more"),
        "checkpoint_every": (
            {"checkpoint_every": -1.0},
            "`checkpoint_every`: got -1.0, expected seconds >= 0",
        ),
    }
    for values, message in cases.values():
        with pytest.raises(ValueError) as info:
            cfg.load_config(tiny_config, **values)
        assert message in str(info.value)
    with pytest.raises(ValueError, match="a TOML file or a built-in config name"):
        cfg.load_config("no-such-config")


def test_builtin_configs_are_valid():
    names = cfg.builtin_configs()
    assert {"quickstart", "mnist-shared", "cifar4-noise", "mnist4-noise-cnn", "mnist-data-scaling"} <= set(
        names
    )
    for name in names:
        config = cfg.load_config(name)
        assert config.name == name or name == "mnist-shared"
    assert cfg.load_config("mnist-depth4").widths[-1] == 65536
    assert cfg.load_config("cifar4-noise").classes == ("bird", "cat", "airplane", "automobile")
    # The repository's configs/ folder is the package's.
    assert (ROOT / "configs" / "quickstart.toml").read_text() == names["quickstart"].read_text()


def test_runs_and_task_striping(tiny_config):
    config = cfg.load_config(tiny_config)
    names = [run.name for run in cfg.runs(config)]
    assert names == ["w8_s0", "w8_s1", "w8_s2", "w8_s3"]
    config = cfg.load_config(tiny_config, widths=[4, 8], seeds=2)
    assert [run.name for run in cfg.runs(config)] == ["w4_s0", "w4_s1", "w8_s0", "w8_s1"]
    config = cfg.load_config(tiny_config, kind="data_size", widths=[8], data_sizes=[10, 100])
    config = cfg.load_config(tiny_config, kind="data_size", widths=[8], data_sizes=[10, 100], seeds=2)
    assert [run.name for run in cfg.runs(config)] == ["n10_s0", "n10_s1", "n100_s0", "n100_s1"]
    config = cfg.load_config(
        tiny_config, kind="noise", model="cnn", noise_fractions=[0.0, 0.25], seeds=1, classes=["0", "7"]
    )
    runs = cfg.runs(config)
    assert [run.name for run in runs] == ["p0_s0", "p25_s0"] and runs[1].noise_fraction == 0.25
    assert cfg.parse_task("3/16") == (3, 16)
    with pytest.raises(ValueError, match="`task`"):
        cfg.parse_task("16/16")


def test_sweep_writes_store_xarray_reads_it_and_rerun_skips(tiny_config, tmp_path):
    xr = pytest.importorskip("xarray")
    config = cfg.load_config(tiny_config, widths=[4, 8], seeds=1, store=str(tmp_path / "s.zarr"))
    first = sweep.run_sweep(config, task="1/2")
    assert first.done == ("w8_s0",) and not first.complete
    summary = sweep.run_sweep(config)
    assert summary.done == ("w4_s0",) and summary.skipped == ("w8_s0",) and summary.complete
    runs = _check_complete(config.store_path, config)
    root = zarr.open_group(str(config.store_path), mode="r")
    assert root.attrs["config"]["widths"] == [4, 8] and "jax" in root.attrs["versions"]
    assert root.attrs["ntkspec_version"] and root.attrs["created"]

    ds = xr.open_zarr(config.store_path, group="w8_s0", consolidated=False)
    assert ds.sizes == {"record": _expected_records(config), "k": 3}
    assert ds["top_eigenvalues"].dims == ("record", "k") and ds["trace"].dims == ("record",)
    assert list(ds["method"].values) == ["exact"] * ds.sizes["record"]
    assert ds.attrs["status"] == "complete" and ds.attrs["width"] == 8 and ds.attrs["depth"] == 3
    np.testing.assert_array_equal(ds["train_loss"].values, runs["w8_s0"]["train_loss"])
    assert runs["w8_s0"]["train_loss"][-1] < runs["w8_s0"]["train_loss"][0]

    # A store made by another config is refused, naming what differs.
    other = cfg.load_config(tiny_config, widths=[4, 8], seeds=1, lr=0.1, store=config.store)
    with pytest.raises(ValueError, match="lr: 0.01 there, 0.1 now"):
        sweep.run_sweep(other)
    # More seeds grow the store (its finished seeds kept); fewer are refused.
    more = cfg.load_config(tiny_config, widths=[4, 8], seeds=2, store=config.store)
    grown = sweep.run_sweep(more)
    assert set(grown.done) == {"w4_s1", "w8_s1"} and set(grown.skipped) == {"w4_s0", "w8_s0"}
    assert zarr.open_group(str(config.store_path), mode="r").attrs["config"]["seeds"] == 2
    fewer = cfg.load_config(tiny_config, widths=[4, 8], seeds=1, store=config.store)
    with pytest.raises(ValueError, match="seeds: 2 there, 1 now"):
        sweep.run_sweep(fewer)
    # So do more widths (e.g. the widest ones, trained elsewhere); widths dropped are refused.
    wider = cfg.load_config(tiny_config, widths=[4, 8, 16], seeds=2, store=config.store)
    grown = sweep.run_sweep(wider, task="0/2")
    assert grown.done == ("w16_s0",) and set(grown.skipped) == {"w4_s0", "w8_s0"}
    assert zarr.open_group(str(config.store_path), mode="r").attrs["config"]["widths"] == [4, 8, 16]
    narrower = cfg.load_config(tiny_config, widths=[8, 16], seeds=2, store=config.store)
    with pytest.raises(ValueError, match=r"widths: \[4, 8, 16\] there, \[8, 16\] now"):
        sweep.run_sweep(narrower)


def test_diverged_run_is_recorded_and_the_sweep_goes_on(tiny_config, tmp_path):
    config = cfg.load_config(tiny_config, seeds=2, optimizer="sgd", lr=1e30, store=str(tmp_path / "d.zarr"))
    summary = sweep.run_sweep(config)
    assert summary.diverged == ("w8_s0", "w8_s1") and summary.done == ("w8_s0", "w8_s1")
    for name in summary.diverged:
        attrs, arrays = store.read_run(config.store_path, name)
        assert attrs["status"] == "diverged"
        assert "lower learning rate" in attrs["message"] and "lr 1e+30" in attrs["message"]
        assert attrs["n_records"] == arrays["epoch"].size >= 1
    assert sweep.run_sweep(config).skipped == ("w8_s0", "w8_s1")


def test_runtime_failure_is_recorded_and_retried(tiny_config, tmp_path, monkeypatch):
    config = cfg.load_config(tiny_config, widths=[4, 8], seeds=1, store=str(tmp_path / "f.zarr"))
    real_train = sweep.train_ensemble

    def out_of_memory_at_width_4(models, *args, **kwargs):
        if models[0].layers[0].out_features == 4:
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
        return real_train(models, *args, **kwargs)

    monkeypatch.setattr(sweep, "train_ensemble", out_of_memory_at_width_4)
    summary = sweep.run_sweep(config)
    assert summary.failed == ("w4_s0",) and summary.done == ("w8_s0",) and not summary.complete
    attrs, _ = store.read_run(config.store_path, "w4_s0")
    assert attrs["status"] == "failed" and "RuntimeError: RESOURCE_EXHAUSTED" in attrs["message"]
    monkeypatch.setattr(sweep, "train_ensemble", real_train)
    retried = sweep.run_sweep(config)
    assert retried.done == ("w4_s0",) and retried.skipped == ("w8_s0",) and retried.complete


@pytest.fixture(scope="module")
def two_task_store(tmp_path_factory):
    """The tiny sweep run by two processes at once, tasks 0/2 and 1/2, into one store."""
    folder = tmp_path_factory.mktemp("two")
    config_path = folder / "tiny.toml"
    config_path.write_text(TINY)
    path = folder / "two.zarr"
    processes = [_spawn(config_path, path, task) for task in ("0/2", "1/2")]
    for process in processes:
        _finish(process)
    return config_path, path


@pytest.mark.xdist_group("two_task_store")  # one worker builds the fixture once
def test_two_processes_on_disjoint_tasks(two_task_store):
    config_path, path = two_task_store
    config = cfg.load_config(config_path, store=str(path))
    _check_complete(path, config)


def _records_written(path):
    """Records appended so far over all runs (read from the runs' zarr.json, as a reader would)."""
    total = 0
    for meta in Path(path).glob("*/zarr.json"):
        with contextlib.suppress(OSError, ValueError):
            total += json.loads(meta.read_text())["attributes"].get("n_records", 0)
    return total


@pytest.mark.xdist_group("two_task_store")  # one worker builds the fixture once
def test_resume_after_sigkill(two_task_store, tmp_path):
    config_path, reference = two_task_store
    config = cfg.load_config(config_path, store=str(tmp_path / "killed.zarr"))
    path = config.store_path
    total = len(cfg.runs(config)) * _expected_records(config)
    rng = random.Random(4)
    # Kill at random points: once a random number of records is on disk, after a random delay.
    targets = sorted(rng.sample(range(2, total), 2))
    killed_with_records = []
    for target in targets:
        process = _spawn(config_path, path, "0/1")
        while process.poll() is None and _records_written(path) < target:
            time.sleep(0.01)
        assert process.poll() is None, process.communicate()[1][-3000:]  # still running
        time.sleep(rng.uniform(0.0, 0.1))
        process.kill()  # SIGKILL
        process.communicate()  # reap it and close its pipes
        killed_with_records.append(_records_written(path))
    assert all(0 < n < total for n in killed_with_records), killed_with_records  # really mid-sweep
    _finish(_spawn(config_path, path, "0/1"))
    resumed = _check_complete(path, config)
    # Same numbers as the uninterrupted two-process sweep: nothing lost, duplicated or mixed up.
    expected = _check_complete(reference, config)
    for name, arrays in expected.items():
        for field in ("epoch", "train_loss", "test_accuracy", "trace", "top_eigenvalues"):
            np.testing.assert_array_equal(resumed[name][field], arrays[field])


def _latest_checkpoint(folder) -> int:
    """The epoch of the latest checkpoint in `folder` (as its zarr.json names it), or -1."""
    with contextlib.suppress(OSError, ValueError, KeyError):  # absent, being written, none yet
        return int(json.loads((folder / "zarr.json").read_text())["attributes"]["latest"][5:])
    return -1


@pytest.mark.xdist_group("two_task_store")  # one worker builds the fixture once
def test_killed_ensemble_goes_on_from_its_checkpoint(two_task_store, tmp_path):
    config_path, reference = two_task_store
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(TINY + "checkpoint_every = 0\n")  # at every evaluation
    config = cfg.load_config(config_path, store=str(tmp_path / "checkpointed.zarr"))
    path, key = config.store_path, "w8_s0-1-2-3"  # the one ensemble of the sweep
    process = _spawn(config_path, path, "0/1")
    while process.poll() is None and _latest_checkpoint(path / "_checkpoints" / key) < 4:
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[1][-3000:]  # killed mid-ensemble
    process.kill()
    process.communicate()
    kept = store.read_checkpoint(path, key).arrays["n_records"]
    assert np.all(kept >= 2)  # the records at epochs 0 and 4
    before = {run.name: store.read_run(path, run.name)[1]["spectrum_seconds"] for run in cfg.runs(config)}
    epoch = store.read_checkpoint(path, key).epoch
    summary = json.loads(_finish(_spawn(config_path, path, "0/1")).splitlines()[-1])
    assert summary["resumed"] == [f"{name}@{epoch}" for name in before]
    resumed = _check_complete(path, config)
    expected = _check_complete(reference, config)
    for (name, seconds), n in zip(before.items(), kept, strict=True):
        # Kept, not measured again (a timing never repeats to the bit) ...
        np.testing.assert_array_equal(resumed[name]["spectrum_seconds"][:n], seconds[:n])
        for field in ("epoch", "train_loss", "test_accuracy", "trace", "top_eigenvalues", "kernel_velocity"):
            # ... and the same numbers as the sweep never killed.
            np.testing.assert_array_equal(resumed[name][field], expected[name][field])
    for name in before:
        want, got = store.read_whole(reference, name), store.read_whole(path, name)
        assert got[0]["min_test_loss_epoch"] == want[0]["min_test_loss_epoch"]
        np.testing.assert_array_equal(got[2]["trajectory"]["trace"], want[2]["trajectory"]["trace"])
    assert not (path / "_checkpoints" / key).exists()  # deleted once the ensemble ended


@pytest.mark.xdist_group("two_task_store")  # one worker builds the fixture once
def test_two_processes_on_the_same_runs(two_task_store, tmp_path):
    """The same command launched twice: each run is trained by one of them, completely, once."""
    config_path, reference = two_task_store
    config = cfg.load_config(config_path, store=str(tmp_path / "same.zarr"))
    processes = [_spawn(config_path, config.store_path, "0/1") for _ in range(2)]
    summaries = [json.loads(_finish(process).splitlines()[-1]) for process in processes]
    names = [run.name for run in cfg.runs(config)]
    done = [name for summary in summaries for name in summary["done"]]
    assert sorted(done) == sorted(names)  # every run trained, none twice
    for summary in summaries:  # each says what it did and what it left
        assert sorted(summary["done"] + summary["skipped"] + summary["busy"]) == sorted(names)
    resumed = _check_complete(config.store_path, config)
    expected = _check_complete(reference, config)
    for name, arrays in expected.items():
        np.testing.assert_array_equal(resumed[name]["trace"], arrays["trace"])


def test_corrupt_finished_run_is_named_and_rerun(tiny_config, tmp_path):
    config = cfg.load_config(tiny_config, seeds=2, store=str(tmp_path / "c.zarr"))
    sweep.run_sweep(config)
    before = {run.name: store.read_run(config.store_path, run.name)[1] for run in cfg.runs(config)}
    chunk = config.store_path / "w8_s1" / "test_loss" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[-6] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(store.CorruptRunError, match="run 'w8_s1': array 'test_loss'"):
        store.read_run(config.store_path, "w8_s1")
    summary = sweep.run_sweep(config)
    assert summary.corrupt == ("w8_s1",) and summary.done == ("w8_s1",) and summary.skipped == ("w8_s0",)
    after = _check_complete(config.store_path, config)
    for field in ("epoch", "train_loss", "test_loss", "trace", "top_eigenvalues"):
        np.testing.assert_array_equal(after["w8_s0"][field], before["w8_s0"][field])  # not touched
        # The rerun reproduces w8_s1, trained alone now and first in an ensemble of two: another
        # program, equal to float32 rounding (bit for bit on some CPUs, not on all).
        np.testing.assert_allclose(after["w8_s1"][field], before["w8_s1"][field], rtol=1e-5)
