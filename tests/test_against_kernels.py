"""The network against its kernels: each regression against an independent dense float64 solve, the
pretrained network against a separate training, a tiny sweep through `sweep`, `analyze` and `plot`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from typer.testing import CliRunner

from ntkspec import data, infinite, models
from ntkspec._testing import nnx_reference
from ntkspec.cli import app
from ntkspec.experiments import against_kernels, fits, store
from ntkspec.experiments import config as cfg
from ntkspec.experiments.train import make_optimizer, record_epochs, train

TINY = """
name = "tiny-kernels"
kind = "data_size"
dataset = "digits"
depth = 2
widths = [4]
data_sizes = [10, 20]
seeds = 1
n_ntk = 8
n_test = 100
lr = 0.02
epochs = 20
patience = 10
n_records = 2
top_k = 3
kernels = ["init", "pretrained", "final", "ntk_infinite", "nngp"]
pretrained_samples = 20
"""


def _split(n_train: int, dtype=np.float64) -> data.Split:
    dataset = data.load("digits")
    return data.split(dataset, n_train, 8, jax.random.key(1), n_test=50, dtype=dtype)


def _reference(k_train: np.ndarray, k_test: np.ndarray, y: np.ndarray, rho: float) -> np.ndarray:
    """K(x*, X)(K + λI)⁻¹ y with λ = ρ tr K / rows: numpy's dense solve."""
    ridge = rho * np.trace(k_train) / k_train.shape[0]
    return k_test @ np.linalg.solve(k_train + ridge * np.eye(k_train.shape[0]), y)


@pytest.mark.parametrize("n_train", [6, 40])  # N·C = 60 <= P = 310 (dual), 400 > P (primal)
def test_entk_regression_matches_a_dense_float64_solve(n_train):
    split = _split(n_train)
    model = models.build("mlp", (64,), 10, jax.random.key(2), width=4, depth=2, param_dtype=jnp.float64)
    rows = 10 * n_train  # the joint kernel of training and test inputs, cut in blocks
    joint = nnx_reference(model, np.concatenate([split.x_train, split.x_test]))
    y = against_kernels.targets(split.y_train, 10).reshape(-1)
    want = _reference(joint[:rows, :rows], joint[rows:, :rows], y, 1e-4).reshape(-1, 10)
    got = against_kernels.entk_regression(model, split, [1e-4])
    assert got.method == ("dual" if n_train * 10 <= 310 else "primal")
    np.testing.assert_allclose(got.predictions, want, rtol=1e-7, atol=1e-9)
    assert got.residual < 1e-10
    mse, error = against_kernels.scores(got.predictions, split.y_test, 10)
    want_targets = np.eye(10)[split.y_test] - 0.1
    assert mse == pytest.approx(np.mean((want - want_targets) ** 2))
    assert error == pytest.approx(np.mean(want.argmax(1) != split.y_test))


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_infinite_regression_is_the_kron_regression(kernel):
    split = _split(30)
    widths = (64, 16, 16)
    function = infinite.mlp_ntk if kernel == "ntk" else infinite.mlp_nngp
    k_train = np.kron(np.asarray(function(split.x_train, None, widths)), np.eye(10))
    k_test = np.kron(np.asarray(function(split.x_test, split.x_train, widths)), np.eye(10))
    y = against_kernels.targets(split.y_train, 10).reshape(-1)
    want = _reference(k_train, k_test, y, 1e-4).reshape(-1, 10)
    got = against_kernels.infinite_regression(kernel, split, widths, [1e-4])
    np.testing.assert_allclose(got.predictions, want, rtol=1e-8, atol=1e-10)


def _tiny_sweep(folder):
    """The tiny config swept through the command line in `folder`: (config, store, output)."""
    config = folder / "tiny.toml"
    config.write_text(TINY)
    path = folder / "tiny.zarr"
    result = CliRunner().invoke(
        app, ["sweep", str(config), "--store", str(path), "--no-progress", "--no-analyze"]
    )
    assert result.exit_code == 0, result.output
    return config, path


def test_sweep_with_kernels_through_sweep_analyze_and_plot(tmp_path, monkeypatch):
    # One sweep serves both halves (as a module fixture it would run once per xdist worker). It
    # trains the size-k run itself, so it never trains it again for the pretrained kernel.
    def no_retraining(*args):
        raise AssertionError("the sweep trained the size-k run again")

    monkeypatch.setattr(against_kernels, "_train_pretrained", no_retraining)
    config_path, path = _tiny_sweep(tmp_path)
    monkeypatch.undo()

    # The pretrained network is the size-k run trained again (once: `known` keeps it).
    config = cfg.load_config(config_path, store=str(path))
    digits = data.load("digits")
    run = next(r for r in cfg.runs(config) if r.n_train == 20 and r.seed == 0)
    known = {}
    network, why = against_kernels.pretrained_network(config, run, digits, lambda _: {}, known)  # lr fixed
    assert why == "" and known == {run.name: (network, "")}
    assert against_kernels.pretrained_network(config, run, digits, lambda _: {}, known)[0] is network
    source = run  # size k: for larger sizes the same nested training set's first k samples
    split = cfg.run_split(config, source, digits)
    separate = train(
        cfg.run_model(config, source, split),
        split,
        make_optimizer("adam", 0.02),
        record_epochs(20, 2),
        eval_every=config.eval_every,
        patience=10,
    )
    for a, b in zip(*(jax.tree.leaves(nnx.state(m)) for m in (network, separate.min_model)), strict=True):
        np.testing.assert_array_equal(a, b)
    attrs, _ = store.read_run(path, source.name)  # the sweep's own run of size k
    assert attrs["min_test_loss"] == pytest.approx(separate.min_test_loss, rel=1e-6)

    # The sweep stores the regressions; analyze and plot report them.
    dataset = store.open_sweep(path)
    assert dataset["kernel"].values.tolist() == list(cfg.KERNELS)
    error = dataset["kernel_test_error"]
    assert error.dims == ("data_size", "seed", "kernel") and error.shape == (2, 1, 5)
    status = dataset["kernel_status"].sel(kernel="pretrained").values
    assert (status[0] == "n < k").all() and (status[1:] == "fitted").all()
    assert np.isnan(error.sel(data_size=10, kernel="pretrained")).all()
    fitted = error.where(dataset["kernel_status"] == "fitted")
    assert np.isfinite(fitted).sum() == 9 and ((fitted >= 0) & (fitted <= 1)).sum() == 9
    assert set(dataset["kernel_method"].sel(data_size=20, kernel="final").values) == {"dual"}
    at_k = dataset["kernel_test_mse"].sel(data_size=20)  # the sweep's own size-k network, reused
    np.testing.assert_array_equal(at_k.sel(kernel="pretrained"), at_k.sel(kernel="final"))

    result = CliRunner().invoke(app, ["analyze", str(path), "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "eNTK pretrained (k = 20)" in result.output and "b(net) − b" in result.output
    lines = result.output.splitlines()
    boxed = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert max(len(line) for line in boxed) <= 80  # CliRunner's console is 80 columns wide
    for label in ("network", "eNTK at init", "eNTK final", "K∞ (NTK)", "NNGP"):
        assert any(line.startswith(f"│ {label} ") for line in lines), label
    assert "network against NNGP: b(net) − b =" in result.output and "one seed: no interval" in result.output
    figures = tmp_path / "figures"
    plotted = CliRunner().invoke(app, ["plot", str(path), "--out-dir", str(figures), "--formats", "png"])
    assert plotted.exit_code == 0 and (figures / "tiny-kernels.png").is_file()
    assert not list(figures.glob("*.pdf"))


def test_paired_exponent_difference():
    rng = np.random.default_rng(0)
    x = np.repeat([10.0, 30.0, 100.0, 300.0], 5)
    seeds = np.tile(np.arange(5), 4)
    noise = rng.normal(0, 0.05, (2, x.size))
    a, b = 2 * x**-0.5 * np.exp(noise[0]), x**-0.2 * np.exp(noise[1])
    diff, low, high = fits.paired_exponent_difference(x, a, b, seeds, n_boot=200)
    fit_a, fit_b = (fits.fit_power_law(x, y, seeds, n_boot=200) for y in (a, b))
    assert diff == pytest.approx(fit_a.exponent - fit_b.exponent)
    assert low < diff < high and low < -0.3 < high
    b[x < 30] = np.nan  # the difference is over the sizes both have
    only = fits.paired_exponent_difference(x, a, b, seeds, n_boot=200)[0]
    keep = x >= 30
    want = fits.fit_power_law(x[keep], a[keep], seeds[keep]).exponent
    assert only == pytest.approx(want - fits.fit_power_law(x[keep], b[keep], seeds[keep]).exponent)


BASE = {"kind": "data_size", "data_sizes": [10, 20], "widths": [8]}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**BASE, "kernels": ["ntk"]}, "`kernels`: got ['ntk'], expected distinct names of ('init'"),
        ({**BASE, "kernels": ["init", "init"]}, "distinct names"),
        ({"kernels": ["init"]}, "expected none for kind 'width'"),
        ({**BASE, "kernels": ["pretrained"]}, "`pretrained_samples`: got None, expected one of data_sizes"),
        ({**BASE, "kernels": ["pretrained"], "pretrained_samples": 15}, "got 15, expected one of data_sizes"),
        ({**BASE, "kernels": ["init"], "pretrained_samples": 10}, "no value without 'pretrained'"),
        ({**BASE, "model": "cnn", "kernels": ["nngp"]}, "no ['nngp'] with model 'cnn'"),
        ({**BASE, "kernels": ["init"], "kernel_ridges": [1e-4, 0]}, "`kernel_ridges`: got [0.0001, 0.0]"),
        ({**BASE, "kernels": ["init"], "kernel_ridges": []}, "`kernel_ridges`: got []"),
    ],
)
def test_bad_kernel_configs_say_what_is_wrong(values, message):
    with pytest.raises(ValueError, match=None) as error:
        cfg.SweepConfig.from_dict(values)
    assert message in str(error.value)


def test_configs_without_kernels_keep_their_stored_form():
    assert "kernels" not in cfg.SweepConfig().to_dict()  # old stores still match their config
