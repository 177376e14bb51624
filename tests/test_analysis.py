"""Analysis: run summaries of synthetic records, power laws and breakpoints with known answers."""

import json
import math

import numpy as np
import pytest
import zarr
from _synthetic import write_sweep
from rich.console import Console

from ntkspec.experiments.analysis import analyze_store, read_store
from ntkspec.experiments.fits import (
    ensemble,
    exponent_difference,
    fit_breakpoint,
    fit_offset_power_law,
    fit_power_law,
)
from ntkspec.experiments.summaries import adaptation_rate, run_summary, running_mean

WIDTHS = np.array([16, 32, 64, 128, 256, 512, 1024, 2048, 4096], dtype=float)


def _sweep(law, seeds, noise, rng):
    """Per-run (x, y, seed) with y = law(x) times log-normal noise."""
    x = np.repeat(WIDTHS, seeds)
    seed = np.tile(np.arange(seeds), WIDTHS.size)
    return x, law(x) * np.exp(noise * rng.standard_normal(x.size)), seed


def _records(n=50, a=3.0, b=-2.0, i_min=30):
    epoch = np.arange(n) * 5.0
    train_loss = np.exp(-np.linspace(0.0, 4.0, n))
    test_loss = 1.0 + 0.01 * (np.arange(n) - i_min) ** 2
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "trace": a + b * np.log(train_loss),
        "effective_rank": np.linspace(10.0, 20.0, n),
        "cosine_effective_rank": np.linspace(5.0, 8.0, n),
        "test_accuracy": np.linspace(0.1, 0.9, n),
    }


# ------------------------------------------------------------------------------------ one run


def test_running_mean_centred_with_short_edges():
    x = np.arange(10.0)
    np.testing.assert_allclose(running_mean(x, 1), x)
    # a centred mean leaves a linear series unchanged away from the edges
    np.testing.assert_allclose(running_mean(x, 5)[2:-2], x[2:-2])
    np.testing.assert_allclose(running_mean(x, 5)[0], np.mean(x[:3]))
    np.testing.assert_allclose(running_mean(x, 50), np.full(10, x.mean()))
    with_nan = x.copy()
    with_nan[4] = np.nan
    assert running_mean(with_nan, 3)[4] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="window"):
        running_mean(x, 0)


def test_adaptation_rate_of_linear_trace_in_log_loss_is_its_slope():
    rec = _records(b=-2.5)
    for window in (1, 20, 200):
        np.testing.assert_allclose(adaptation_rate(rec["trace"], rec["train_loss"], window), -2.5)
    flat = adaptation_rate(np.ones(5), np.ones(5), 2)
    assert np.all(np.isnan(flat))


def test_adaptation_rate_of_a_short_run_whose_loss_rounds_to_zero():
    # 15 records, the train loss reaching float32's exact 0 from record 11 on (as a memorised
    # training set does): the default window must not average the flat tail into the early records.
    rec = _records(n=15, b=-2.5)
    rec["train_loss"][11:] = 0.0
    rec["trace"][11:] = rec["trace"][10]
    rate = adaptation_rate(rec["trace"], rec["train_loss"])
    np.testing.assert_allclose(rate[:10], -2.5)
    assert np.all(np.isnan(rate[11:]))
    assert run_summary({**rec, "test_loss": 1.0 + (np.arange(15) - 5.0) ** 2}).adaptation_rate_at_min == (
        pytest.approx(-2.5)
    )


def test_run_summary_known_values():
    rec = _records(a=3.0, b=-2.0, i_min=30)
    s = run_summary(rec)
    assert (s.min_index, s.min_epoch, s.min_test_loss) == (30, 150.0, 1.0)
    assert s.trace0 == pytest.approx(3.0)
    t_min = 3.0 - 2.0 * np.log(rec["train_loss"][30])
    assert s.trace_ratio == pytest.approx((t_min - 3.0) / 3.0)
    assert s.effective_rank_at_min == pytest.approx(rec["effective_rank"][30])
    assert s.cosine_effective_rank_at_min == pytest.approx(rec["cosine_effective_rank"][30])
    assert s.test_accuracy_at_min == pytest.approx(rec["test_accuracy"][30])
    assert s.adaptation_rate_at_min == pytest.approx(-2.0)


def test_run_summary_optional_arrays_and_bad_input():
    rec = _records()
    assert run_summary({**rec, "init_alignment": np.linspace(1.0, 0.5, 50)}).init_alignment_at_min == (
        pytest.approx(1.0 - 0.5 * 30 / 49)
    )
    del rec["cosine_effective_rank"], rec["test_accuracy"]
    s = run_summary(rec)
    assert math.isnan(s.cosine_effective_rank_at_min) and math.isnan(s.test_accuracy_at_min)
    assert math.isnan(s.init_alignment_at_min)  # stores recorded before the alignment was
    with pytest.raises(ValueError, match="test_loss"):
        run_summary({k: v for k, v in rec.items() if k != "test_loss"})
    with pytest.raises(ValueError, match="shapes"):
        run_summary({**rec, "trace": rec["trace"][:-1]})
    with pytest.raises(ValueError, match="finite"):
        run_summary({**rec, "test_loss": np.full(50, np.nan)})


def test_ensemble_mean_and_stderr():
    e = ensemble([1, 1, 1, 2, 2, 3], [1.0, 2.0, 3.0, 5.0, np.nan, 7.0])
    np.testing.assert_array_equal(e.x, [1, 2, 3])
    np.testing.assert_allclose(e.mean, [2.0, 5.0, 7.0])
    np.testing.assert_array_equal(e.count, [3, 1, 1])
    assert e.stderr[0] == pytest.approx(1.0 / math.sqrt(3))
    assert np.isnan(e.stderr[1:]).all()


# ------------------------------------------------------------------------------------- fits


def test_power_law_recovers_exponent_and_ci_covers_it():
    x, y, seed = _sweep(lambda w: 3.0 * w**-0.5, 8, 0.1, np.random.default_rng(1))
    fit = fit_power_law(x, y, seed, n_boot=400, rng=2)
    assert fit.exponent == pytest.approx(-0.5, abs=0.03)
    assert fit.ci_low < -0.5 < fit.ci_high
    assert fit.prefactor == pytest.approx(3.0, rel=0.15)
    assert fit.n_points == WIDTHS.size and fit.r2 > 0.99
    np.testing.assert_allclose(fit(WIDTHS), fit.prefactor * WIDTHS**fit.exponent)
    again = fit_power_law(x, y, seed, n_boot=400, rng=2)
    assert (again.ci_low, again.ci_high) == (fit.ci_low, fit.ci_high)


def test_power_law_exact_and_range_limited():
    x, y, seed = _sweep(
        lambda w: np.where(w < 600, 2.0 * w**0.7, 2.0 * 600**0.7), 3, 0.0, np.random.default_rng(0)
    )
    fit = fit_power_law(x, y, seed, n_boot=50, x_max=600)
    assert fit.exponent == pytest.approx(0.7, abs=1e-9)
    assert fit.x_max == 512 and fit.ci_low == pytest.approx(0.7) == pytest.approx(fit.ci_high)
    with pytest.raises(ValueError, match="at least 2"):
        fit_power_law(x, y, seed, x_min=5000)
    with pytest.raises(ValueError, match="one run per width and seed"):
        fit_power_law(np.r_[x, 16.0], np.r_[y, 1.0], np.r_[seed, 0])


def test_breakpoint_exact_data():
    law = lambda w: 4.0 * np.minimum(w, 700.0) ** 0.5  # noqa: E731
    x, y, seed = _sweep(law, 2, 0.0, np.random.default_rng(0))
    bp = fit_breakpoint(x, y, seed, n_boot=20)
    assert bp.x == pytest.approx(700.0, rel=1e-3)
    assert bp.slopes_left[0] == pytest.approx(0.5, abs=1e-6)
    assert bp.slopes_right[0] == pytest.approx(0.0, abs=1e-6)
    assert bp.ci[0] == pytest.approx(700.0, rel=1e-3) and bp.ci[1] == pytest.approx(700.0, rel=1e-3)
    np.testing.assert_allclose(bp(WIDTHS), law(WIDTHS), rtol=1e-6)


def test_transition_breakpoint_shared_by_two_noisy_series():
    # One fixed realisation: a 95% interval misses the truth in 5-10% of realisations (measured
    # over 60-100 synthetic sweeps like this one), so the coverage assertion holds for this seed.
    rng = np.random.default_rng(1)
    x, rank, seed = _sweep(lambda w: 4.0 * np.minimum(w, 700.0) ** 0.5, 10, 0.05, rng)
    ratio = 1.5 * np.minimum(1.0, (x / 700.0) ** -0.7) * np.exp(0.05 * rng.standard_normal(x.size))
    single = fit_breakpoint(x, ratio, seed, n_boot=200, rng=0)
    joint = fit_breakpoint(x, np.stack([rank, ratio], axis=1), seed, n_boot=200, rng=0)
    for bp in (single, joint):
        assert bp.x == pytest.approx(700.0, rel=0.15)
        assert bp.ci[0] < 700.0 < bp.ci[1]
    np.testing.assert_allclose(joint.slopes_left, [0.5, 0.0], atol=0.05)
    np.testing.assert_allclose(joint.slopes_right, [0.0, -0.7], atol=0.08)
    assert joint.slopes_right_ci[1, 0] < -0.7 < joint.slopes_right_ci[1, 1]
    with pytest.raises(ValueError, match="at least 4"):
        fit_breakpoint(x[x < 100], ratio[x < 100], seed[x < 100])


# ----------------------------------------------------------------------------------- stores


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_sweep(tmp_path_factory.mktemp("sweep") / "mlp.zarr", seeds=(0, 1, 2))


def test_read_store_cuts_records(store):
    sweep = read_store(store)
    assert sweep.kind == "width" and sweep.x_name == "width"
    assert sweep.runs["w16_s0"].records["trace"].shape == (40,)
    assert sweep.runs["w16_s4"].status == "running"
    assert sweep.runs["w16_s4"].records["top_eigenvalues"].shape == (10, 4)
    assert list(sweep.runs["w16_s0"].records["method"]) == ["exact"] * 40


def test_analyze_store_skips_and_fits(store, tmp_path):
    a = analyze_store(store, n_boot=100)
    assert {s["name"]: s["status"] for s in a.skipped} == {
        "w4096_s3": "diverged",
        "w16_s4": "running",
    }
    assert len(a.runs) == 27 and len(a.table.rows) == 9
    first, last = a.table.rows[0], a.table.rows[-1]
    assert (first["width"], first["runs"], first["incomplete"]) == (16, 3, 1)
    assert (last["width"], last["runs"], last["diverged"]) == (4096, 3, 1)
    assert a.fits["min_test_loss"].exponent == pytest.approx(-0.5, abs=0.05)
    assert a.fits["effective_rank_at_min"].exponent == pytest.approx(0.5, abs=0.1)
    assert a.fits["trace_ratio"].exponent == pytest.approx(-0.7, abs=0.15)
    assert 400 < a.transition.x < 1200
    assert a.adaptation_sign == -1.0
    markdown = a.table.to_markdown()
    assert markdown.startswith("| width | runs |") and markdown.count("\n") == 10
    report = a.to_markdown()
    assert "- breakpoint transition: w* = " in report and "skipped w4096_s3 (diverged)" in report
    console = Console(record=True, width=200)
    console.print(a.table.to_rich(title="mlp", width=console.width))  # wrapped, as the CLI does
    assert "4096" in console.export_text()
    console.print(a)  # the whole analysis renders through `__rich__`
    assert "breakpoint transition" in console.export_text()
    csv_path, json_path = a.write(tmp_path)
    assert csv_path.read_text().splitlines()[0].startswith("width,runs,diverged,incomplete")
    saved = json.loads(json_path.read_text())
    assert saved["breakpoints"]["transition"]["x"] == pytest.approx(a.transition.x)
    assert len(saved["runs"]) == 27


def test_data_size_sweep_groups_by_n_train(tmp_path):
    path = write_sweep(
        tmp_path / "data.zarr",
        kind="data_size",
        values=(50, 100, 200, 400),
        seeds=(0, 1),
        n_records=12,
    )
    a = analyze_store(path, n_boot=20)
    assert a.x_name == "n_train"
    assert [row["n_train"] for row in a.table.rows] == [50, 100, 200, 400]
    assert "min_test_loss" in a.fits


def test_store_errors(tmp_path):
    with pytest.raises(ValueError, match="path"):
        read_store(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "bare.zarr"), mode="w").attrs["config"] = {"dataset": "x"}
    with pytest.raises(ValueError, match="kind"):
        read_store(tmp_path / "bare.zarr")


def test_complete_run_without_finite_test_loss_is_skipped(tmp_path):
    store = write_sweep(tmp_path / "nan.zarr", values=(16, 32), seeds=(0,), n_records=8)
    zarr.open_group(str(store / "w16_s0"), mode="r+")["test_loss"][:] = np.nan
    a = analyze_store(store, n_boot=10)
    unusable = [s for s in a.skipped if s["status"] == "unusable"]
    assert [s["name"] for s in unusable] == ["w16_s0"] and "test_loss" in unusable[0]["message"]
    assert a.table.rows[0]["runs"] == 0 and a.table.rows[0]["incomplete"] == 2
    assert "fit min_test_loss" in a.not_fitted  # one width left: no power law


def test_noise_sweep_is_tabulated_not_fitted(tmp_path):
    path = write_sweep(tmp_path / "noise.zarr", kind="noise", values=(0.0, 0.5), seeds=(0,), n_records=8)
    a = analyze_store(path, n_boot=10)
    assert a.x_name == "noise_fraction" and [r["noise_fraction"] for r in a.table.rows] == [0, 0.5]
    assert a.fits == {} and "all" in a.not_fitted


def test_unreadable_run_is_skipped(tmp_path):
    store = write_sweep(tmp_path / "torn.zarr", values=(16, 32), seeds=(0,), n_records=8)
    (store / "w32_s0" / "zarr.json").write_text("{torn")
    a = analyze_store(store, n_boot=10)
    statuses = {entry["name"]: entry["status"] for entry in a.skipped}
    assert statuses == {"w32_s0": "unreadable", "w32_s1": "diverged", "w16_s2": "running"}
    assert [r.name for r in a.runs] == ["w16_s0"]


def test_adaptation_rate_from_the_trajectory_by_hand():
    # The study's App. B.4: running means over 20 epochs of T and ln L, then dT / d ln L at the minimum.
    rec = _records(n=50)
    epochs = np.arange(0, 500, 5.0)  # a trajectory every 5 epochs: the window is 4 points
    loss = np.exp(-epochs / 100) * (1 + 0.1 * np.sin(epochs))
    trace = 7.0 + 3.0 * np.log(loss) ** 2
    at_min = {name: rec[name][30] for name in rec} | {"epoch": 250.0, "test_loss": 0.9}
    summary = run_summary(
        rec, at_min=at_min, trajectory={"epoch": epochs, "trace": trace, "train_loss": loss}
    )
    t_mean, l_mean = running_mean(trace, 4), running_mean(np.log(loss), 4)
    i = int(np.argmin(np.abs(epochs - 250.0)))
    hand = (t_mean[i + 1] - t_mean[i - 1]) / (l_mean[i + 1] - l_mean[i - 1])
    assert summary.exact_minimum and summary.adaptation_rate_at_min == pytest.approx(hand, rel=1e-12)
    assert summary.min_epoch == 250.0 and summary.min_test_loss == 0.9
    assert (
        summary.trace_at_min == pytest.approx(rec["trace"][30]) and summary.min_index == 49
    )  # the record nearest epoch 250


def test_offset_power_law_recovers_floor_and_exponent():
    rng = np.random.default_rng(3)
    x, y, seed = _sweep(lambda w: 0.3 + 4.0 * w**-0.5, 6, 0.01, rng)
    fit = fit_offset_power_law(x, y, seed, n_boot=200, rng=1)
    assert fit.offset == pytest.approx(0.3, abs=0.03) and fit.exponent == pytest.approx(-0.5, abs=0.06)
    assert fit.ci_low < -0.5 < fit.ci_high and fit.offset_ci[0] <= 0.3 <= fit.offset_ci[1]
    rising = np.where(x > 1000, 2.0, 1.0) * (0.3 + 4.0 * x**-0.5)  # the loss rises again past 512
    assert fit_offset_power_law(x, rising, seed, n_boot=20).x_max == 512
    plain = fit_power_law(x, y, seed, n_boot=50)
    diff, lo, hi = exponent_difference(fit, plain)
    assert diff == pytest.approx(fit.exponent - plain.exponent) and lo < diff < hi


def test_compare_two_sweeps_names_the_shared_exponents(tmp_path, monkeypatch):
    import functools

    from typer.testing import CliRunner

    from ntkspec.cli import app
    from ntkspec.experiments import analysis
    from ntkspec.experiments.analysis import compare

    monkeypatch.setattr(analysis, "analyze_store", functools.partial(analyze_store, n_boot=100))

    small = dict(values=(16, 64, 256, 1024, 4096), seeds=(0, 1), n_records=12)
    store = write_sweep(tmp_path / "one.zarr", transition=100.0, **small)
    other = write_sweep(tmp_path / "other.zarr", transition=300.0, **small)
    a, b = analysis.analyze_store(store), analysis.analyze_store(other)
    rows = compare(a, b, n_boot=100)
    own = [row for row in rows if not row.shared_range]
    assert [row.quantity for row in own] == [name for name in a.fits if name in b.fits]
    row = next(r for r in own if r.quantity == "trace_ratio")
    assert row.difference == exponent_difference(a.fits["trace_ratio"], b.fits["trace_ratio"])
    # Past breakpoints at 100 and 300 the trace ratios' own ranges differ; refitted over the widths
    # both share, each is the power law of its runs there.
    assert (row.a.x_min, row.a.x_max) != (row.b.x_min, row.b.x_max)
    shared = next(r for r in rows if r.shared_range and r.quantity == "trace_ratio")
    low, high = max(row.a.x_min, row.b.x_min), min(row.a.x_max, row.b.x_max)
    for fit, analysed in ((shared.a, a), (shared.b, b)):
        x, y, seeds = analysed.per_run("trace_ratio")
        assert fit == fit_power_law(x, y, seeds, n_boot=100, rng=0, x_min=low, x_max=high)
    assert shared.difference == exponent_difference(shared.a, shared.b)
    result = CliRunner().invoke(app, ["compare", str(store), str(other)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "trace_ratio" in result.output and f"{row.difference[0]:+.3f}" in result.output
    assert "trace_ratio (shared range)" in result.output
    with pytest.raises(ValueError, match="n_boot"):
        compare(a, b, n_boot=1)
    with pytest.raises(ValueError, match="level"):
        compare(a, b, level=1.5)
