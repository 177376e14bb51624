"""The reference study's protocol: learning-rate calibration, the exact minimum test loss, patience,
label alignment and eigenvector rotation, and the bad inputs of these settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ntkspec
from ntkspec import data, models
from ntkspec._testing import reference_kernel
from ntkspec.estimators import one_hot_targets
from ntkspec.experiments import store
from ntkspec.experiments.analysis import Calibration, analyze_store
from ntkspec.experiments.config import load_config
from ntkspec.experiments.measure import Measure
from ntkspec.experiments.sweep import run_sweep
from ntkspec.experiments.train import make_optimizer, train

TINY = """
name = "protocol"
kind = "width"
dataset = "digits"
depth = 3
widths = [32]
seeds = 1
n_train = 100
n_ntk = 4
n_test = 300
lr = "calibrate"
min_epoch_window = [300, 600]
epochs = 700
eval_every = 5
patience = 40
n_records = 3
top_k = 3
"""


@pytest.fixture(scope="module")
def split():
    return data.split(data.load("digits"), 100, 8, jax.random.key(0), n_test=300)


def _model(width=16, seed=1):
    return models.build("mlp", (64,), 10, jax.random.key(seed), width=width, depth=3)


def test_calibration_slows_a_width_where_1e3_is_too_fast(tmp_path):
    path = tmp_path / "protocol.toml"
    # At lr 1e-3 this network's minimum test loss falls near epoch 400: too early for [600, 1200].
    path.write_text(TINY.replace("[300, 600]", "[600, 1200]").replace("epochs = 700", "epochs = 1300"))
    config = load_config(path, store=str(tmp_path / "p.zarr"))
    summary = run_sweep(config)
    assert summary.done == ("w32_s0",) and summary.complete
    calibration = store.read_calibration(config.store_path, "w32")
    assert calibration["status"] == "calibrated"
    pilots = {lr: epoch for lr, epoch in calibration["pilots"]}
    assert pilots[1e-3] < 600  # 1e-3 puts the minimum too early here ...
    assert calibration["lr"] < 1e-3 and 600 <= pilots[calibration["lr"]] <= 1200  # ... the choice inside
    assert all(not 600 <= e <= 1200 for lr, e in pilots.items() if lr > calibration["lr"])  # the largest
    ds = ntkspec.open_sweep(config.store_path)
    run = ds.sel(width=32, seed=0)
    assert float(run["lr"]) == pytest.approx(calibration["lr"])
    assert int(run["min_test_loss_epoch"]) == pilots[calibration["lr"]]  # the pilot was the seed-0 run
    assert float(run["test_loss_at_min"]) == pytest.approx(float(run["min_test_loss"]), rel=1e-6)
    assert float(run["test_loss_at_min"]) <= np.nanmin(run["trajectory_test_loss"].values) + 1e-7
    # `ntkspec analyze` reports the calibration and where the minimum fell against the window.
    analysis = analyze_store(config.store_path, n_boot=10)
    (found,) = analysis.calibration
    assert (found.value, found.status, found.lr, found.window) == (
        32,
        "calibrated",
        calibration["lr"],
        (600, 1200),
    )
    assert found.pilots == sorted(pilots.items()) and found.median_epoch == pilots[calibration["lr"]]
    assert found.inside and "| 32 | calibrated |" in analysis.to_markdown()
    assert analysis.to_dict()["calibration"][0]["inside"] is True
    assert found.min_losses == pytest.approx([float(run["min_test_loss"])])
    assert found.at_cap == int(int(run["stopped_epoch"]) >= 1300)
    assert np.isnan(found.epoch_loss_correlation)  # one seed: no correlation


def test_epoch_loss_correlation_is_pearsons_r_over_seeds():
    rng = np.random.default_rng(3)
    epochs = rng.integers(400, 1200, 12).astype(float)
    losses = 1.2 - 4e-4 * epochs + 0.05 * rng.normal(size=12)
    found = Calibration(64, "calibrated", 1e-4, [(1e-4, 700)], epochs, (400, 1000), losses, 2)
    assert found.epoch_loss_correlation == pytest.approx(np.corrcoef(epochs, losses)[0, 1], rel=1e-12)
    assert found.epoch_loss_correlation < -0.5
    few = Calibration(64, "calibrated", 1e-4, [], epochs[:2], (400, 1000), losses[:2], 0)
    assert np.isnan(few.epoch_loss_correlation)


def test_uncalibrated_value_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = tmp_path / "protocol.toml"
    path.write_text(TINY.replace("[300, 600]", "[300, 301]").replace("widths = [32]", "widths = [16, 32]"))
    config = load_config(path, store=str(tmp_path / "u.zarr"), pilot_runs=1)
    summary = run_sweep(config)
    assert summary.done == ("w16_s0", "w32_s0") and summary.complete
    attrs, _ = store.read_run(config.store_path, "w16_s0")
    assert attrs["status"] == "uncalibrated" and "raise pilot_runs" in attrs["message"]
    analysis = analyze_store(config.store_path, n_boot=10)
    assert [(c.value, c.status, c.lr, c.inside) for c in analysis.calibration] == [
        (16, "uncalibrated", None, False),
        (32, "uncalibrated", None, False),
    ]
    assert "| 16 | uncalibrated | – |" in analysis.to_markdown()


def test_parameters_at_the_minimum_equal_a_run_stopped_there(split):
    optimizer = make_optimizer("adam", 1e-2)
    result = train(_model(), split, optimizer, [0, 120], eval_every=7)
    assert 0 < result.min_epoch < 120
    assert result.min_test_loss == pytest.approx(float(np.min(result.trajectory["test_loss"])), abs=0.05)
    stopped = train(_model(), split, optimizer, [result.min_epoch], eval_every=1000)
    for a, b in zip(
        jax.tree.leaves(ntkspec.ntk(result.min_model, split.x_ntk).params),
        jax.tree.leaves(ntkspec.ntk(stopped.model, split.x_ntk).params),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)
    # Every epoch of the replay window, evaluated one by one, has a test loss no lower.
    for epoch in range(max(result.min_epoch - 7, 0), result.min_epoch + 8):
        other = train(_model(), split, optimizer, [epoch], eval_every=1000)
        assert other.min_test_loss >= result.min_test_loss - 1e-6 or epoch < result.min_epoch - 7


def test_patience_stops_the_run_and_the_minimum_is_measured(split, key):
    records = []
    result = train(
        _model(),
        split,
        make_optimizer("adam", 1e-2),
        [0, 10, 100, 400],
        Measure(split, key, top_k=3),
        recorder=records.append,
        eval_every=5,
        patience=30,
    )
    assert result.status == "complete" and result.stopped < 400
    assert result.min_epoch + 30 <= result.stopped < result.min_epoch + 30 + 10
    assert [r.epoch for r in records] == [e for e in (0, 10, 100) if e <= result.stopped]
    assert result.minimum.epoch == result.min_epoch
    assert result.minimum.test_loss == pytest.approx(result.min_test_loss, rel=1e-6)
    traj = result.trajectory
    assert traj["epoch"][-1] == result.stopped and np.all(np.diff(traj["epoch"]) > 0)
    assert traj["trace"][0] == pytest.approx(records[0].trace, rel=1e-5)


@pytest.mark.parametrize(("method", "width"), [("exact", 16), ("stochastic", 16), ("exact", 8)])
def test_label_alignment_and_rotation_against_dense_references(split, key, method, width):
    """Eq. 16 and eq. 17 from `jax.jacrev` kernels; matrix-free, the label alignment within its error
    bar and the rotation from Ritz vectors (80 rows: Lanczos converges to working precision). At
    width 8 < C = 10 the kernels have multiplets of equal eigenvalues, which r may cut."""
    x = jnp.asarray(split.x_ntk, jnp.float64)
    split64 = data.Split(
        split.x_train, split.y_train, np.asarray(x), split.y_ntk, split.x_test, split.y_test, split.classes
    )
    first, second = (
        models.build("mlp", (64,), 10, jax.random.key(seed), width=width, depth=3, param_dtype=jnp.float64)
        for seed in (2, 3)
    )
    measure = Measure(split64, key, top_k=3, method=method)
    metrics = {"train_loss": 1.0, "test_loss": 1.0, "train_accuracy": 0.0, "test_accuracy": 0.0}
    a = measure(first, 0, metrics)
    b = measure(second, 1, metrics)
    kernels = []
    for net in (first, second):
        graphdef, params = nnx.split(net)
        kernels.append(reference_kernel(lambda p, xs, g=graphdef: nnx.merge(g, p)(xs), params, x))
    y = np.asarray(one_hot_targets(split.y_ntk, 10))
    for record, kernel in zip((a, b), kernels, strict=True):
        expected = y @ kernel @ y / (np.linalg.norm(kernel) * (y @ y))
        if method == "exact":
            assert record.label_alignment == pytest.approx(expected, rel=1e-8)
        else:
            assert 0 < record.label_alignment_stderr < 0.05 * expected
            assert abs(record.label_alignment - expected) < 4 * record.label_alignment_stderr
    assert np.isnan(a.eigenvector_rotation)
    (lam, u), (mu, v) = (np.linalg.eigh(k) for k in kernels)
    lam, u, mu, v = lam[::-1], u[:, ::-1], mu[::-1], v[:, ::-1]
    r = round(a.effective_rank)  # the rank the record used (an estimate when stochastic)
    # r moved to the end of a multiplet it cuts, in the first kernel and then in the second
    r1 = next(i for i in range(r, lam.size) if lam[i - 1] - lam[i] > 1e-6 * lam[0])
    r2 = next(i for i in range(r1, mu.size) if mu[i - 1] - mu[i] > 1e-6 * mu[0])
    cut = np.sum(np.isclose(lam[r - 1], lam, rtol=1e-9)) > 1 and r < r1
    assert cut == (width == 8)  # a multiplet at the cut only in the narrow network
    expected = 1 - np.linalg.norm(u[:, :r1].T @ v[:, :r2]) ** 2 / min(r1, r2)
    rtol = 1e-6 if method == "exact" else 1e-4
    assert b.eigenvector_rotation == pytest.approx(expected, rel=rtol)
    assert 0 < b.eigenvector_rotation < 1


def test_ritz_vectors_for_more_ranks_than_the_default_krylov_basis_holds(key):
    """r = 150 needs k = 256 Ritz pairs, more than top_eigenpairs' default basis of 200 columns
    holds: the basis grows to fit them; the top ones agree with `eigh` of the dense kernel."""
    forty = data.split(data.load("digits"), 10, 40, jax.random.key(0), n_test=10)
    op = ntkspec.ntk(_model(width=64), forty.x_ntk)  # 400 rows
    ranks, vectors = Measure(forty, key)._eigenvectors(op, [150], key)
    assert ranks[0] >= 150 and vectors.shape == (400, 256)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(256), atol=1e-4)
    exact = np.linalg.eigh(np.asarray(op.dense(), np.float64))[1][:, ::-1][:, :10]
    overlap = np.linalg.norm(exact.T @ vectors[:, :10]) ** 2 / 10
    assert overlap > 0.999


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_epoch_window": [600, 300]}, "`min_epoch_window`: got [600, 300]"),
        ({"patience": -1}, "`patience`: got -1"),
        ({"eval_every": 0}, "`eval_every`: got 0"),
        ({"epochs": 500}, "`epochs`: got 500, expected at least the window's upper end 600"),
        ({"lr": "slow"}, "`lr`: got 'slow' (str)"),
    ],
)
def test_bad_protocol_settings_are_named(tmp_path, values, message):
    path = tmp_path / "protocol.toml"
    path.write_text(TINY)
    with pytest.raises(ValueError) as info:
        load_config(path, **values)
    assert message in str(info.value)


def test_bad_training_settings_are_named(split):
    with pytest.raises(ValueError, match="`eval_every`: got 0"):
        train(_model(), split, make_optimizer("adam", 1e-3), [0, 5], eval_every=0)
    with pytest.raises(ValueError, match="`patience`: got -1"):
        train(_model(), split, make_optimizer("adam", 1e-3), [0, 5], patience=-1)


def test_a_killed_calibration_goes_on_from_its_finished_pilots(tmp_path, monkeypatch):
    from ntkspec.experiments import sweep

    path = tmp_path / "protocol.toml"
    # Three pilots here: lr 1e-3 -> epoch 384 (too slow), 1.8e-3 -> 225 (inside), 3.2e-3 -> 114.
    path.write_text(TINY.replace("[300, 600]", "[150, 300]").replace("epochs = 700", "epochs = 400"))
    config = load_config(path, store=str(tmp_path / "p.zarr"))
    real, calls = sweep.train, []

    def killed_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the sweep is killed during its third pilot
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "train", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config)
    unfinished = store.read_calibration(config.store_path, "w32")
    assert unfinished["status"] == "calibrating" and len(unfinished["pilots"]) == 2
    assert unfinished["failed"] == [] and ntkspec.open_sweep(config.store_path).sizes.get("seed", 0) == 0

    calls.clear()
    monkeypatch.setattr(sweep, "train", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert run_sweep(config).complete
    calibration = store.read_calibration(config.store_path, "w32")
    pilots = {lr: epoch for lr, epoch in calibration["pilots"]}
    assert calibration["status"] == "calibrated" and len(calls) == len(pilots) - 2  # only the rest trained
    assert all(pilots[lr] == epoch for lr, epoch in unfinished["pilots"])
    assert 150 <= pilots[calibration["lr"]] <= 300


def test_a_pilot_killed_in_training_goes_on_from_its_checkpoint(tmp_path, monkeypatch):
    from ntkspec.experiments import sweep

    path = tmp_path / "protocol.toml"
    path.write_text(TINY.replace("[300, 600]", "[150, 300]").replace("epochs = 700", "epochs = 400"))
    config = load_config(path, store=str(tmp_path / "p.zarr"), checkpoint_every=0)
    assert run_sweep(load_config(path, store=str(tmp_path / "whole.zarr"))).complete
    whole = store.read_calibration(tmp_path / "whole.zarr", "w32")
    real, resumed = sweep.train, []

    def killed(*args, **kwargs):
        if len(resumed) == 1:  # the second pilot: killed after its checkpoint at epoch 50
            write = kwargs["checkpoint"]

            def checkpoint(state):
                write(state)
                if state.epoch == 50:
                    raise KeyboardInterrupt

            kwargs["checkpoint"] = checkpoint
        resumed.append(kwargs["resume"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config)
    assert store.read_checkpoint(config.store_path, "w32_pilot_lr0.00178").epoch == 50
    resumed.clear()
    monkeypatch.setattr(sweep, "train", lambda *a, **k: resumed.append(k["resume"]) or real(*a, **k))
    assert run_sweep(config).complete
    assert resumed[0].epoch == 50 and all(state is None for state in resumed[1:])
    calibration = store.read_calibration(config.store_path, "w32")
    assert calibration["pilots"] == whole["pilots"] and calibration["lr"] == whole["lr"]
    assert store.read_checkpoint(config.store_path, "w32_pilot_lr0.00178") is None  # deleted when done


def test_an_unfinished_calibration_keeps_which_pilots_diverged():
    import json

    from ntkspec.experiments import sweep

    done = {-5: (650, True), 0: (384, True), 4: (1301, False)}  # step 4 (lr 1e-2) diverged
    stored = json.loads(json.dumps(sweep._calibrating(done)))
    assert stored["failed"] == [pytest.approx(1e-2)] and sweep._stored_pilots(stored) == done
