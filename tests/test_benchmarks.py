"""The benchmark suite runs end to end at its smallest scale and writes well-formed results."""

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import ntkspec
from ntkspec.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_suite_smoke_writes_json_figures_and_summary(tmp_path):
    out = tmp_path / "suite"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "run",
            "--smoke",
            "--only",
            "width,kernel-size",
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
    kernel = json.loads((out / "kernel-size.json").read_text())
    assert len(kernel["rows"]) == 4 and all("error" not in r for r in kernel["rows"])
    assert set(kernel["memory_slope"]) == {"matvec", "stochastic"}
    summary = (out / "summary.md").read_text()
    assert "## Width" in summary and "## Kernel size" in summary and "## Anchors" not in summary
    assert (out / "width.png").stat().st_size > 0 and (out / "kernel_size.png").stat().st_size > 0


def test_bench_command_needs_the_source_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(ntkspec, "__file__", str(tmp_path / "site-packages" / "ntkspec" / "__init__.py"))
    result = CliRunner().invoke(app, ["bench", "--quick"])
    assert result.exit_code == 2
    assert "no benchmarks folder" in result.output


def test_bench_command_forwards_to_the_suite():
    result = CliRunner().invoke(app, ["bench", "--only", "no-such-section"])
    assert result.exit_code == 2  # argparse in `python -m benchmarks run` rejected the section
