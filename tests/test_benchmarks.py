"""The benchmark suite runs end to end at its smallest scale and writes well-formed results."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from typer.testing import CliRunner

import ntkspec
from benchmarks import _harness as h
from ntkspec.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_suite_smoke_writes_json_figure_and_summary(tmp_path):
    out = tmp_path / "suite"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            "--smoke",
            "--only",
            "width",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    width = json.loads((out / "width.json").read_text())
    assert width["section"] == "width" and {r["method"] for r in width["rows"]} == {
        "structured",
        "jacobian",
        "stochastic",
    }
    for row in width["rows"]:
        assert "error" not in row, row
        assert row["seconds"] > 0 and row["peak_bytes"] > 0 and row["xla_bytes"] > 0
    jacobian = next(r for r in width["rows"] if r["method"] == "jacobian")
    assert jacobian["max_rel_diff_vs_structured"] < 1e-4  # both paths give the same K
    summary = (out / "summary.md").read_text()
    assert "## Width" in summary and "## Kernel size" not in summary
    assert (out / "width.png").stat().st_size > 0


def test_bench_command_needs_the_source_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(ntkspec, "__file__", str(tmp_path / "site-packages" / "ntkspec" / "__init__.py"))
    result = CliRunner().invoke(app, ["bench", "--quick"])
    assert result.exit_code == 2
    assert "no benchmarks folder" in result.output


def test_bench_command_forwards_to_the_suite():
    result = CliRunner().invoke(app, ["bench", "--only", "no-such-section"])
    assert result.exit_code == 2  # argparse in `python -m benchmarks run` rejected the section


def test_summary_renders_real_ntks_per_dataset_and_says_what_was_skipped(tmp_path):
    from benchmarks import suite

    row = {
        "state": "init",
        "kernel": "raw",
        "budget": 50,
        "rows": 100,
        "train_accuracy": None,
        "exact_effective_rank": 28.4,
        "rmse_rel_error": 0.098,
        "max_abs_rel_error": 0.14,
        "mean_rel_stderr": 0.057,
        "coverage": 0.5,
        "seeds": 2,
        "seconds_per_spectrum": 1.9,
    }
    settings = {"n_ntk": 10, "n_train": 50, "steps": 5, "seeds": 2, "inputs": 64, "width": 64}
    section = {
        "section": "work-precision",
        "scale": "smoke",
        "seconds": 1.0,
        "estimators": {"error": "not run here"},
        "real_ntk": {
            "digits": {"rows": [row, row | {"kernel": "cosine"}], "settings": settings},
            "mnist": {"skipped": "no mnist/ in --data-dir (None)"},
        },
    }
    (tmp_path / "work-precision.json").write_text(json.dumps(section))
    (tmp_path / "meta.json").write_text(json.dumps({"scale": "smoke"}))
    summary = suite.render(tmp_path).read_text()
    assert "Real NTKs, digits: MLP 64 → 64 → 64 → 10" in summary and "| init | cosine | 50 |" in summary
    assert "Real NTKs (mnist): no mnist/ in --data-dir" in summary
    assert "- work-precision: 1 s, date not recorded, machine not recorded." in summary
    assert (tmp_path / "real_ntk_erank.png").stat().st_size > 0


def test_harness_programs_are_what_the_library_runs():
    """The suite's ahead-of-time programs give what `ntkspec.spectrum` and `op.matvec` give."""
    op = h.study_operator(16, 8)
    exact = ntkspec.spectrum(op, "exact")
    assert h.exact_spectrum(op, "structured", 1)["effective_rank"] == pytest.approx(
        exact.effective_rank, rel=1e-6
    )
    stochastic = ntkspec.spectrum(op, "stochastic", key=jax.random.key(0), budget=50)
    got = h.stochastic_spectrum(op, 50, 1, key_seed=0)
    assert got["effective_rank"] == pytest.approx(stochastic.effective_rank, rel=1e-6)
    assert got["matvecs"] == stochastic.matvecs and got["xla_bytes"] > 0 and got["peak_bytes"] > 0
    v = jax.random.normal(jax.random.key(1), (op.shape[0], 3), op.dtype)
    np.testing.assert_allclose(h.compile_matvec(op, v)(op, v), op.matvec(v), rtol=1e-6)


def test_gpu_exact_stage_compares_both_precisions_with_float64(tmp_path):
    """`benchmarks.gpu`'s exact stage (run on a lent GPU) on the CPU: one row per precision, each
    written to its log as it is measured; on the CPU both are float32 arithmetic."""
    import time

    from benchmarks import gpu

    log = tmp_path / "rows.jsonl"
    task = {"widths": [8], "reference_max": 8, "deadline": time.monotonic() + 600, "log": str(log)}
    rows = gpu.exact_task(task)["rows"]
    assert [row["precision"] for row in rows] == list(gpu.PRECISIONS)
    for row in rows:
        assert row["rel_error_vs_float64"] < 1e-5 and row["dense_s"] > 0 and row["effective_rank"] > 1
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows


def test_ensemble_cases_take_the_platform_repeats_and_leave_data_scaling_out():
    from benchmarks import ensembles, suite

    settings = suite.SCALES["smoke"]["ensembles"] | {"platform": "cuda", "data_dir": "/data", "repeats": 1}
    cases = ensembles._cases(settings | {"data_scaling": None})
    assert [case["sweep"] for case in cases] == ["width"] * len(settings["widths"])
    assert all(case["platform"] == "cuda" and case["repeats"] == 1 for case in cases)
    assert [case["sweep"] for case in ensembles._cases(settings)][-1] == "data_size"


def test_epoch_cap_pairs_runs_by_name_and_separates_the_runs_the_cap_stopped():
    from benchmarks.epoch_cap import compare_caps

    def run(n, loss, epoch, stopped):
        return {"n_train": n, "min_test_loss": loss, "min_test_loss_epoch": epoch, "stopped_epoch": stopped}

    capped = {
        "n10_s0": run(10, 2.0, 500, 700),
        "n10_s1": run(10, 1.8, 1200, 1200),  # stopped by the cap at its last epoch
        "n10_s2": run(10, 1.9, 1100, 1200),  # stopped by the cap 100 epochs past its minimum
        "n30_s0": run(30, 1.5, 600, 800),
        "n30_s9": run(30, 1.0, 600, 800),  # only in one store: left out
    }
    uncapped = {
        "n10_s0": run(10, 2.0 + 1e-5, 503, 703),
        "n10_s1": run(10, 1.5, 1900, 2100),
        "n10_s2": run(10, 1.9, 1100, 1300),
        "n30_s0": run(30, 1.5, 600, 800),
    }
    ten, thirty = compare_caps(capped, uncapped, 1200, "n_train")
    assert (ten.value, ten.runs, ten.at_cap, ten.past_cap) == (10, 3, 2, 1)
    assert ten.loss_capped == pytest.approx(5.7 / 3) and ten.loss_uncapped == pytest.approx((5.4 + 1e-5) / 3)
    changes = np.array([1e-5, -0.3, 0.0])
    assert ten.change == pytest.approx(changes.mean())
    assert ten.change_se == pytest.approx(changes.std(ddof=1) / np.sqrt(3))
    assert ten.change_at_cap == pytest.approx(-0.15)
    assert (ten.floor_loss, ten.floor_epoch) == (pytest.approx(1e-5), 3)
    assert (thirty.runs, thirty.at_cap, thirty.change, thirty.floor_epoch) == (1, 0, 0.0, 0)
    assert np.isnan(thirty.change_se) and np.isnan(thirty.change_at_cap)
    with pytest.raises(ValueError, match="share no complete run"):
        compare_caps(capped, {"n99_s0": run(99, 1, 1, 1)}, 1200, "n_train")
