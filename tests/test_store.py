"""The sweep store: `open_sweep` of width, data-size and noise sweeps; checksums, missing chunks and
packed stores; the 80-column table; the experiment layer's import order."""

import ast
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from rich.console import Console

import ntkspec
from ntkspec._testing import TOP_K, write_store
from ntkspec.experiments import report, store
from ntkspec.experiments.analysis import analyze_store
from ntkspec.experiments.config import SweepConfig, runs

BASE = {"name": "s", "dataset": "digits", "seeds": 2, "top_k": TOP_K, "epochs": 10}


def _config(**values):
    return SweepConfig.from_dict({**BASE, **values})


@pytest.mark.parametrize(
    ("values", "dim", "coords", "names"),
    [
        ({"kind": "width", "widths": [8, 16]}, "width", [8, 16], ("w8_s0", "w16_s1")),
        (
            {"kind": "data_size", "widths": [8], "data_sizes": [10, 100]},
            "data_size",
            [10, 100],
            ("n10_s0", "n100_s1"),
        ),
        (
            {"kind": "noise", "widths": [8], "noise_fractions": [0.0, 0.25]},
            "noise_fraction",
            [0.0, 0.25],
            ("p0_s0", "p25_s1"),
        ),
    ],
)
def test_open_sweep_dims_coords_and_padding(tmp_path, values, dim, coords, names):
    config = _config(**values)
    first, last = names
    all_runs = [r.name for r in runs(config)]
    lengths = {name: 4 for name in all_runs}
    lengths[first], lengths[last] = 2, 3  # a diverged run and an unfinished one, shorter
    path = write_store(tmp_path / "s.zarr", config, lengths, {first: "diverged", last: "running"})
    ds = ntkspec.open_sweep(path)
    assert ds[dim].values.tolist() == coords and ds["seed"].values.tolist() == [0, 1]
    assert ds["trace"].dims == (dim, "seed", "record") and ds.sizes["record"] == 4
    assert ds["top_eigenvalues"].dims == (dim, "seed", "record", "k") and ds.sizes["k"] == TOP_K
    assert "epoch" in ds.coords and ds["epoch"].dims == (dim, "seed", "record")
    assert ds["status"].dims == (dim, "seed")
    status = {
        str(n): str(s) for n, s in zip(ds["name"].values.ravel(), ds["status"].values.ravel(), strict=True)
    }
    assert status[first] == "diverged" and status[last] == "running"
    assert list(status.values()).count("complete") == 2
    short = ds.isel({dim: 0, "seed": 0})
    assert short["n_records"] == 2 and np.isnan(short["trace"].values[2:]).all()
    assert np.isfinite(short["trace"].values[:2]).all() and short["epoch"].values[:2].tolist() == [0, 10]
    assert float(ds["lr"].values[0, 0]) == config.lr and ds.attrs["config"]["seeds"] == 2
    assert ds.attrs["expected_runs"] == 4 and ds.attrs["kind"] == config.kind


def test_open_sweep_marks_missing_runs(tmp_path):
    config = _config(kind="width", widths=[8, 16])
    path = write_store(tmp_path / "s.zarr", config, {"w8_s0": 2, "w16_s1": 2}, {})
    ds = ntkspec.open_sweep(path)
    assert ds["status"].values.tolist() == [["complete", "missing"], ["missing", "complete"]]
    a = analyze_store(path, n_boot=10)
    assert "found 2 run(s) of the 4 the config asks for" in a.to_markdown()


@pytest.fixture
def store_path(tmp_path):
    config = _config(kind="width", widths=[8, 16, 32])
    names = [f"w{w}_s{s}" for w in (8, 16, 32) for s in (0, 1)]
    return write_store(tmp_path / "s.zarr", config, dict.fromkeys(names, 5), {})


def _flip(chunk: Path) -> None:
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_damaged_chunk_names_the_run_and_is_skipped(store_path, damage):
    chunk = store_path / "w16_s1" / "trace" / "c" / "0"
    _flip(chunk) if damage == "corrupt" else chunk.unlink()
    with pytest.raises(store.CorruptRunError, match=r"run 'w16_s1': array 'trace'"):
        store.read_run(store_path, "w16_s1")
    assert store.verify(store_path, "w16_s1") and store.verify(store_path, "w16_s0") is None
    ds = ntkspec.open_sweep(store_path)
    cell = ds.sel(width=16, seed=1)
    assert str(cell["status"].values) == "unreadable" and "'trace'" in str(cell["message"].values)
    assert np.isnan(cell["trace"].values).all()
    a = analyze_store(store_path, n_boot=10)
    assert [s["name"] for s in a.skipped] == ["w16_s1"] and len(a.runs) == 5
    assert "skipped w16_s1 (unreadable): run 'w16_s1': array 'trace'" in a.to_markdown()


def test_packed_store_reads_as_the_folder(store_path, tmp_path):
    packed, left_out = store.pack(store_path)
    assert packed.name == "s.zarr.zip" and packed.is_file() and left_out == ()
    folder, archive = ntkspec.open_sweep(store_path), ntkspec.open_sweep(packed)
    for name in ("trace", "epoch", "top_eigenvalues", "status", "lr"):
        np.testing.assert_array_equal(folder[name].values, archive[name].values)
    assert store.list_runs(packed) == store.list_runs(store_path)
    assert store.read_run(packed, "w8_s0")[0] == store.read_run(store_path, "w8_s0")[0]
    table = analyze_store(packed, n_boot=10).table.to_markdown()
    assert table == analyze_store(store_path, n_boot=10).table.to_markdown()
    with pytest.raises(ValueError, match="packed") as error:
        store.open_store(packed, {})
    assert f"python -m zipfile -e {packed} runs/s.zarr" in str(error.value)
    unpacked = tmp_path / "unpacked" / "s.zarr"  # the advice followed: the sweep goes on in it
    zipfile.ZipFile(packed).extractall(unpacked)
    store.open_store(unpacked, zarr.open_group(str(store_path), mode="r").attrs["config"])
    assert store.list_runs(unpacked) == store.list_runs(store_path)
    shutil.rmtree(store_path / "w8_s0" / "trace")
    with pytest.raises(store.CorruptRunError):  # a damaged folder is not packed
        store.pack(store_path, tmp_path / "bad.zip")
    assert not list(tmp_path.glob("bad.zip*"))


def test_a_live_store_packs_without_its_runs_in_training(tmp_path):
    config = _config(kind="width", widths=[8, 16])
    lengths = {r.name: 3 for r in runs(config)}
    path = write_store(tmp_path / "s.zarr", config, lengths, {"w16_s1": "running"})
    (path / "w16_s1" / "trace" / "c" / "0").unlink()  # half written, as while it trains
    out = tmp_path / "committed" / "s.zarr.zip"
    out.parent.mkdir()
    out.write_bytes(b"an earlier pack")
    packed, left_out = store.pack(path, out)
    assert packed == out and left_out == ("w16_s1",) and list(out.parent.iterdir()) == [out]
    assert store.list_runs(out) == ["w16_s0", "w8_s0", "w8_s1"]
    ds = ntkspec.open_sweep(out)
    assert str(ds["status"].sel(width=16, seed=1).values) == "missing"
    np.testing.assert_array_equal(
        ds["trace"].sel(width=8).values, ntkspec.open_sweep(path)["trace"].sel(width=8).values
    )


def test_table_fits_80_columns(store_path):
    a = analyze_store(store_path, n_boot=10)
    console = Console(record=True, width=80)
    console.print(report.rich(a, width=80))
    text = console.export_text()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for label in ("min test loss", "trace ratio", "cos. eff. rank", "A(K0, K*)", "incomplete"):
        assert label in text
    wide = Console(record=True, width=400)
    wide.print(report.rich(a, width=80, wide=True))
    assert max(len(line) for line in wide.export_text().splitlines()) > 80


LAYERS = (
    "records",
    "checkpoint",
    "ensemble",
    "config",
    "measure",
    "train",
    "store",
    "against_kernels",
    "sweep",
    "summaries",
    "fits",
    "report",
    "analysis",
    "plots",
)


def test_each_module_imports_only_those_below_it():
    folder = Path(ntkspec.__file__).parent / "experiments"
    assert sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__") == sorted(LAYERS)
    for level, name in enumerate(LAYERS):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {
            node.module.split(".")[2]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ntkspec.experiments.")
        }
        imported |= {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "ntkspec.experiments"
            for alias in node.names
        }
        above = imported & set(LAYERS[level:])
        assert not above, f"{name} imports {sorted(above)}, which sit above it"
