from typer.testing import CliRunner  # noqa: E402

from ntkspec._testing import TOP_K, write_store  # noqa: E402
from ntkspec.cli import app  # noqa: E402
from ntkspec.experiments import store  # noqa: E402
from ntkspec.experiments.config import SweepConfig  # noqa: E402

TINY = """
name = "tiny-cli"
dataset = "digits"
depth = 3
widths = [8]
seeds = 1
n_train = 20
n_ntk = 4
n_test = 20
lr = 0.01
epochs = 10
n_records = 3
top_k = 3
"""


def test_sweep_command_runs_analyzes_plots_and_resumes(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    path = tmp_path / "out" / "tiny.zarr"
    runner = CliRunner()
    args = ["sweep", str(config), "--widths", "4,8", "--epochs", "6", "--store", str(path)]
    result = runner.invoke(app, [*args, "--no-progress", "--formats", "png"])
    assert result.exit_code == 0, result.output
    assert store.list_runs(path) == ["w4_s0", "w8_s0"]
    attrs, arrays = store.read_run(path, "w4_s0")
    assert attrs["status"] == "complete" and arrays["epoch"].tolist() == [0, 1, 6]
    assert "2 run(s) trained" in result.output and "Store:" in result.output
    figures = sorted((tmp_path / "out" / "tiny-figures").glob("*.png"))
    assert figures and all(str(f) in result.output for f in figures)
    assert not list((tmp_path / "out" / "tiny-figures").glob("*.pdf"))  # --formats png
    assert (tmp_path / "out" / "tiny.table.csv").is_file() and "width sweep, 2 runs" in result.output

    again = runner.invoke(app, [*args, "--no-progress", "--no-analyze"])
    assert again.exit_code == 0 and "0 run(s) trained, 2 already finished" in again.output
    half = runner.invoke(app, [*args, "--task", "0/2", "--no-progress", "--no-analyze"])
    assert half.exit_code == 0 and "1 already finished" in half.output
    finished = runner.invoke(app, [*args, "--no-analyze"])  # progress on, nothing to train: no bar
    assert finished.exit_code == 0 and "0/0" not in finished.output and "epochs" not in finished.output

    packed = runner.invoke(app, ["pack", str(path)])
    assert packed.exit_code == 0 and "tiny.zarr.zip" in packed.output and "Left out" not in packed.output
    zipped = runner.invoke(app, ["analyze", str(path) + ".zip", "--out-dir", str(tmp_path / "z")])
    assert zipped.exit_code == 0 and "width sweep, 2 runs" in zipped.output
    assert (tmp_path / "z" / "tiny.table.csv").read_text() == (
        tmp_path / "out" / "tiny.table.csv"
    ).read_text()


def test_pack_command_leaves_out_runs_in_training_and_keeps_their_folder(tmp_path):
    config = SweepConfig.from_dict(
        {"name": "s", "dataset": "digits", "widths": [8], "seeds": 2, "top_k": TOP_K}
    )
    path = write_store(tmp_path / "s.zarr", config, {"w8_s0": 3, "w8_s1": 2}, {"w8_s1": "running"})
    out = tmp_path / "snapshot.zarr.zip"
    result = CliRunner().invoke(app, ["pack", str(path), "--out", str(out), "--remove"])
    assert result.exit_code == 1 and out.is_file() and path.is_dir()
    assert "Left out 1 runs in training" in result.output and "w8_s1" in result.output
    assert "Not removed" in result.output and store.list_runs(out) == ["w8_s0"]


def test_sweep_command_reports_bad_input(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(TINY.replace("lr = 0.01", "lr = -1.0"))
    result = CliRunner().invoke(app, ["sweep", str(config), "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 2 and "`lr`: got -1.0, expected a positive number" in result.output
    result = CliRunner().invoke(app, ["sweep", str(config), "--widths", "8,x"])
    assert result.exit_code == 2 and "--widths" in result.output
    good = tmp_path / "good.toml"
    good.write_text(TINY)
    result = CliRunner().invoke(
        app, ["sweep", str(good), "--store", str(tmp_path / "f.zarr"), "--formats", "png,tex"]
    )
    assert result.exit_code == 2 and "`formats`: got ['png', 'tex']" in result.output
    assert not (tmp_path / "f.zarr").exists()  # refused before any training
    result = CliRunner().invoke(app, ["sweep", "nope.toml"])
    assert result.exit_code == 2 and "built-in config name" in result.output
    result = CliRunner().invoke(app, ["analyze", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_spectrum_command():
    result = CliRunner().invoke(
        app, ["spectrum", "--width", "8", "--n-ntk", "4", "--top-k", "3", "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    for row in ("trace", "mean diagonal", "entropy", "effective rank", "top eigenvalues", "exact"):
        assert row in result.output
    assert "40" in result.output  # kernel size: 4 samples x 10 classes
