"""How the kernel moves: kernel velocity, distance and alignment with K∞, kernel-regression test error
(`Measure`), against dense float64 references; older stores without these fields; summaries, fits
and figures of a store with them."""

import json
import shutil

import jax
import numpy as np
import pytest
from _synthetic import write_sweep

import ntkspec
from ntkspec import data, models
from ntkspec._testing import nnx_reference, write_store
from ntkspec.estimators import kernel_comparison_stochastic, kernel_distance
from ntkspec.experiments import store
from ntkspec.experiments.analysis import analyze_store
from ntkspec.experiments.config import SweepConfig
from ntkspec.experiments.measure import ALIGNMENT_MATVECS, RIDGE, Measure
from ntkspec.experiments.plots import missing_figures, plot_store
from ntkspec.infinite import mlp_ntk, mlp_operator

METRICS = {"train_loss": 1.0, "test_loss": 1.0, "train_accuracy": 0.1, "test_accuracy": 0.1}
C = 10


@pytest.fixture(scope="module")
def split():
    return data.split(data.load("digits"), 20, 12, jax.random.key(0), n_test=20, dtype=np.float64)


def _mlp(width=16, seed=1, depth=3):
    return models.build(
        "mlp", (64,), C, jax.random.key(seed), width=width, depth=depth, param_dtype=np.float64
    )


def _alignment(a, b):
    return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))


def _infinite(x, width=16):
    return np.kron(np.asarray(mlp_ntk(x, None, (64, width, width))), np.eye(C))


@pytest.fixture(scope="module")
def references(split):
    """Two networks' dense float64 NTKs on the NTK batch, and K∞ ⊗ I_C there."""
    nets = [_mlp(seed=1), _mlp(seed=2)]
    return nets, [nnx_reference(net, split.x_ntk) for net in nets], _infinite(split.x_ntk)


def test_exact_fields_against_dense_references(split, references, key):
    nets, (k0, k1), infinite = references
    measure = Measure(split, key, top_k=3, method="exact")
    first = measure(nets[0], 0, METRICS)
    second = measure(nets[1], 5, METRICS)
    repeated = measure(nets[1], 9, METRICS)
    minimum = measure(nets[0], 7, METRICS, consecutive=False)  # against the last record, `repeated`
    assert np.isnan(first.kernel_velocity) and np.isnan(first.kernel_velocity_stderr)
    assert second.kernel_velocity == pytest.approx(1 - _alignment(k0, k1), rel=1e-8)
    assert repeated.kernel_velocity == pytest.approx(0.0, abs=1e-12)
    assert minimum.kernel_velocity == pytest.approx(1 - _alignment(k1, k0), rel=1e-8)
    for record, kernel in ((first, k0), (second, k1), (minimum, k0)):
        distance = np.linalg.norm(kernel - infinite) / np.linalg.norm(infinite)
        assert record.infinite_distance == pytest.approx(distance, rel=1e-8)
        assert record.infinite_alignment == pytest.approx(_alignment(kernel, infinite), rel=1e-8)
        assert record.infinite_distance_stderr == record.infinite_alignment_stderr == 0.0
    assert second.kernel_velocity_stderr == 0.0


def test_kernel_regression_against_a_numpy_solve(split, references, key):
    nets, _, _ = references
    record = Measure(split, key, top_k=3, method="exact")(nets[0], 0, METRICS)
    n = split.x_ntk.shape[0] * C
    joint = nnx_reference(nets[0], np.concatenate([split.x_ntk, split.x_train]))
    train, cross = joint[n:, n:], joint[:n, n:]
    y = np.eye(C)[split.y_train].reshape(-1)
    ridge = RIDGE * np.trace(train) / train.shape[0]
    f = (cross @ np.linalg.solve(train + ridge * np.eye(train.shape[0]), y)).reshape(-1, C)
    assert record.regression_error == pytest.approx(np.mean(np.argmax(f, 1) != split.y_ntk), abs=1e-12)
    mse = np.mean(np.sum((f - np.eye(C)[split.y_ntk]) ** 2, axis=1))
    assert record.regression_mse == pytest.approx(mse, rel=1e-6)
    assert 0.0 <= record.regression_error <= 1.0


def test_stochastic_comparison_within_its_error_bar(split, references):
    # What `Measure` runs when K is matrix-free: one pass of ALIGNMENT_MATVECS products against the
    # matrix-free K∞ (and against the previous kernel, for the velocity), over several keys.
    nets, (k0, k1), infinite = references
    op, previous = ntkspec.ntk(nets[1], split.x_ntk), ntkspec.ntk(nets[0], split.x_ntk)
    inf_op = mlp_operator(split.x_ntk, (64, 16, 16), C)
    want_distance = np.linalg.norm(k1 - infinite) / np.linalg.norm(infinite)
    run = jax.jit(kernel_comparison_stochastic, static_argnames="num_matvecs")
    for seed in range(4):
        key = jax.random.key(seed)
        alignment, distance = run(op, inf_op, key, num_matvecs=ALIGNMENT_MATVECS)
        assert abs(float(distance.value) - want_distance) <= 4 * float(distance.stderr)
        assert abs(float(alignment.value) - _alignment(k1, infinite)) <= 4 * float(alignment.stderr)
        assert 0 < float(distance.stderr) < 0.05 * want_distance
        velocity, _ = run(previous, op, key, num_matvecs=ALIGNMENT_MATVECS)
        assert abs(float(velocity.value) - _alignment(k0, k1)) <= 4 * float(velocity.stderr)
    same, gap = run(op, op, jax.random.key(0), num_matvecs=ALIGNMENT_MATVECS)
    assert float(same.value) == pytest.approx(1.0, abs=1e-12) and float(gap.value) == 0.0


def test_distance_from_the_infinite_kernel_falls_with_width(split):
    x = split.x_ntk
    distances = {}
    for width in (16, 256):
        infinite = _infinite(x, width)
        distances[width] = [
            float(kernel_distance(ntkspec.ntk(_mlp(width, seed), x).dense(), infinite).value)
            for seed in range(3)
        ]
    assert max(distances[256]) < min(distances[16])
    # About width^-1/2: a 16-fold width is 4 times closer (here 3-5 over 3 seeds).
    assert 2.5 < np.mean(distances[16]) / np.mean(distances[256]) < 8


def test_infinite_kernel_of_an_mlp_only(split, key):
    measure = Measure(split, key, top_k=3)
    dense = measure.operator(_mlp(depth=4))  # exact here: K∞ formed densely, for widths (64, 16, 16, 16)
    infinite = measure._infinite(_mlp(depth=4), dense).dense()
    np.testing.assert_allclose(infinite, np.kron(mlp_ntk(split.x_ntk, None, (64, 16, 16, 16)), np.eye(C)))
    cnn = models.build("cnn", (8, 8, 1), C, jax.random.key(1))  # no K∞: its fields are NaN
    assert measure._infinite(cnn, dense) is None


CONFIG = SweepConfig.from_dict({"name": "motion", "widths": [16, 64], "seeds": 2, "top_k": 3})


def _store(tmp_path, names=("w16_s0", "w16_s1", "w64_s0", "w64_s1")):
    return write_store(tmp_path / "motion.zarr", CONFIG, dict.fromkeys(names, 4), {})


def test_summaries_fits_and_figures_of_a_store_with_the_fields(tmp_path):
    path = write_sweep(
        tmp_path / "motion.zarr", values=(16, 64, 256, 1024), seeds=(0, 1), n_records=12, motion=True
    )
    analysis = analyze_store(path, n_boot=20)
    run = analysis.runs[0]
    summary = analysis.summaries[run.name]
    assert summary.infinite_distance0 == run.records["infinite_distance"][0]
    assert summary.infinite_misalignment0 == pytest.approx(1 - run.records["infinite_alignment"][0])
    assert summary.infinite_distance_at_min == run.records["infinite_distance"][summary.min_index]
    assert summary.regression_error_at_min == run.records["regression_error"][summary.min_index]
    assert summary.label_alignment0 == run.records["label_alignment"][0] == 0.04
    assert summary.label_alignment_at_min == run.records["label_alignment"][summary.min_index]
    fits = analysis.fits
    assert fits["infinite_distance0"].exponent == pytest.approx(-0.5, abs=0.05)  # as written
    assert fits["infinite_misalignment_at_min"].exponent == pytest.approx(-1.0, abs=0.1)
    assert "infinite_distance0" in analysis.table.columns and "trace_ratio" in analysis.table.columns
    curves = next(iter(analysis.dynamics.values()))  # seed means of the two seeds' curves
    np.testing.assert_allclose(curves["label_alignment"], run.records["label_alignment"])
    np.testing.assert_allclose(curves["eigenvector_rotation"][1:], run.records["eigenvector_rotation"][1:])
    assert "kernel_velocity" in curves
    assert not missing_figures(analysis)
    paths = plot_store(path, tmp_path / "figures", analysis=analysis, formats=("png",))
    names = {p.name for p in paths}
    assert {"motion-kernel-motion.png", "motion-infinite.png", "motion-alignment.png"} <= names
    assert all(p.stat().st_size > 10_000 for p in paths) and len(paths) == 6


def test_an_older_store_without_the_fields_opens_and_analyses(tmp_path):
    path = _store(tmp_path)
    added = ("kernel_velocity", "kernel_velocity_stderr", "infinite_distance", "infinite_distance_stderr")
    added += ("infinite_alignment", "infinite_alignment_stderr", "regression_error", "regression_mse")
    for name in store.list_runs(path):  # as a run written before these fields and the `arrays` list
        for field in added:
            shutil.rmtree(path / name / field)
        meta = json.loads((path / name / "zarr.json").read_text())
        del meta["attributes"]["arrays"]
        (path / name / "zarr.json").write_text(json.dumps(meta))
    dataset = store.open_sweep(path)
    assert "kernel_velocity" not in dataset and set(dataset["status"].values.ravel()) == {"complete"}
    analysis = analyze_store(path, n_boot=20)
    assert len(analysis.runs) == 4
    assert np.isnan(analysis.summaries["w16_s0"].infinite_distance0)
    assert "no finite value" in analysis.not_fitted["fit infinite_distance0"]
    assert set(missing_figures(analysis)) == {"infinite"}  # 1 − A(K₀, K) is there: kernel motion drawn


def test_a_run_listing_its_arrays_must_hold_them(tmp_path):
    path = _store(tmp_path, ("w16_s0",))
    shutil.rmtree(path / "w16_s0" / "kernel_velocity")
    with pytest.raises(store.CorruptRunError, match="kernel_velocity"):
        store.read_run(path, "w16_s0")
