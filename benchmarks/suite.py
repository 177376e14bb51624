"""The benchmark suite: work-precision, width, kernel size and neural-tangents anchors in one run.

`python -m benchmarks run [--quick] [--out DIR] [--only SECTION,...]` (see `benchmarks/__main__.py`)
writes one JSON per section to DIR (default `benchmarks/results/suite` or `.../suite-quick`), the
figures as PNG and `DIR/summary.md`. This module orchestrates; each section is its own module, with
`section` (the driver: spawns its workers), `task` (one measurement, in a worker), `render` (its figures
from its JSON) and `summary` (its part of summary.md):

work-precision (`benchmarks.work_precision`)
    the estimators' error against matvecs on synthetic power laws and a digits NTK
    (`benchmarks.estimators_work_precision`), and the stochastic spectrum against the exact one on
    real NTKs (digits; MNIST at full scale when `data_dir` holds `mnist/`), at init and trained.
width (`benchmarks.width`)
    exact (structured, Jacobian) against stochastic spectra of the study MLP 784 -> w -> w -> 10.
kernel-size (`benchmarks.kernel_size`)
    matrix-free matvec and stochastic spectrum as N C grows to 10^5 rows, beside the exact one.
anchors (`benchmarks.anchors`)
    the exact kernel against neural-tangents, in its own venv (reused from `results/anchors.json`
    unless asked to rerun; skipped in quick runs).
ensembles (`benchmarks.ensembles`)
    sweep throughput with a point's seeds in one vmapped program against the per-seed loop.

Every measurement of the width and kernel-size sections runs in a fresh subprocess
(`_harness.spawn_task`): its programs are compiled ahead of time (not timed), then the first run is
timed (blocked until ready) while the peak resident set is measured (see `benchmarks/_harness.py`),
plus the bytes of the arguments already resident; cheap runs are repeated and the best time kept.
XLA's own figure for the compiled programs (`Compiled.memory_analysis()`: arguments + outputs +
temporaries; SciPy's `eigvalsh` is outside it) is recorded beside it. Workers run SciPy's BLAS on one
thread.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from benchmarks import _harness as h
from benchmarks import anchors, ensembles, kernel_size, width, work_precision

HERE = Path(__file__).parent
SECTIONS = ("work-precision", "width", "kernel-size", "anchors", "ensembles")
DATA_DIR = HERE.parent.parent / "shared" / "data"  # the project's shared data, next to the checkout
MODULES = {
    "work-precision": work_precision,
    "width": width,
    "kernel-size": kernel_size,
    "anchors": anchors,
    "ensembles": ensembles,
}
# What a worker process runs: `python -m benchmarks _worker TASK` calls TASKS[TASK["kind"]](TASK).
TASKS = {
    "width": width.task,
    "kernel-size": kernel_size.task,
    "work-precision": work_precision.synthetic_task,
    "real-ntk": work_precision.real_ntk_task,
    "ensembles": ensembles.task,
}
_ENSEMBLES = {"seeds": 5, "n_train": 100, "n_test": 500, "n_ntk": 32, "epochs": 50, "eval_every": 10}

# Sizes per scale. "smoke" is the test's: seconds, not a benchmark.
SCALES = {
    "smoke": {
        "wp": {"n": 100, "seeds": 2, "trace": [24], "erank": [50], "topk": [40]},
        "real": {"n_ntk": 10, "n_train": 50, "steps": 5, "seeds": 2, "budgets": [50]},
        "mnist": None,
        "width": {"widths": [16], "n": 8, "jacobian_max": 16, "stochastic_max": 16, "budget": 50},
        "kernel": {"width": 16, "ns": [10, 20], "budget": 50, "exact_max_rows": 200},
        "ensembles": _ENSEMBLES
        | {"seeds": 2, "n_train": 20, "n_test": 20, "n_ntk": 4, "epochs": 4, "eval_every": 2}
        | {"widths": [8], "data_scaling": 20, "n_records": 3},
    },
    "quick": {
        "wp": {"n": 200, "seeds": 2, "trace": [24, 96], "erank": [100, 200], "topk": [40, 80]},
        "real": {"n_ntk": 50, "n_train": 500, "steps": 50, "seeds": 2, "budgets": [100, 200]},
        "mnist": None,  # quick runs need nothing outside the repository
        "width": {
            "widths": [64, 256],
            "n": 128,
            "jacobian_max": 1024,
            "stochastic_max": 4096,
            "budget": None,
        },
        "kernel": {"width": 64, "ns": [100, 1000], "budget": 200, "exact_max_rows": 3000},
        "ensembles": _ENSEMBLES | {"widths": [8, 512], "data_scaling": 1000, "n_records": 3},
    },
    "full": {
        "wp": {
            "n": 500,
            "seeds": 10,
            "trace": [24, 48, 96, 192],
            "erank": [100, 200, 400],
            "topk": [40, 80, 160],
        },
        "real": {"n_ntk": 100, "n_train": 1000, "steps": 200, "seeds": 10, "budgets": [100, 200, 400]},
        "mnist": {
            "width": 256,
            "n_ntk": 128,
            "n_train": 100,
            "steps": 200,
            "seeds": 10,
            "budgets": [100, 200, 400],
        },
        "width": {
            "widths": [64, 256, 1024, 4096, 16384],
            "n": 128,
            "jacobian_max": 1024,
            "stochastic_max": 4096,
            "budget": None,
        },
        "kernel": {"width": 64, "ns": [100, 300, 1000, 3000, 10000], "budget": 200, "exact_max_rows": 10000},
        "ensembles": _ENSEMBLES | {"widths": [8, 64, 512, 4096], "data_scaling": 1000, "n_records": 4},
    },
}


def worker(task_json: str) -> None:
    """Entry point of a measurement subprocess: run one task, print its JSON as the last line."""
    import jax

    task = json.loads(task_json)
    if task.get("x64"):
        jax.config.update("jax_enable_x64", True)
    print(json.dumps(TASKS[task["kind"]](task)), flush=True)


# --------------------------------------------------------------------------------------------
# Summary.


def _summary(results: dict, meta: dict) -> str:
    flag = {"full": "", "quick": " --quick", "smoke": " --smoke"}[meta["scale"]]
    lines = [
        f"# Benchmark suite ({meta['scale']})",
        "",
        f"`python -m benchmarks run{flag}`, float32 unless said. Each section as it was last run "
        "(`--only` reruns one section and keeps the others):",
        "",
    ]
    for name, r in results.items():
        run = r.get("run") or {"date": r.get("machine", {}).get("date", "date not recorded"), "note": ""}
        m = run.get("machine") or r.get("machine")
        where = "machine not recorded"
        if m:
            where = f"{m['platform']}, {m['cpu_count']} CPU cores, {m['device']}, JAX {m['jax']}"
            if "load_average_at_end" in m:
                where += f", load average at end {m['load_average_at_end'][0]:.1f}"
        lines.append(f"- {name}: {r['seconds']:.0f} s, {run['date']}, {where}. {run['note']}".rstrip())
    lines.append("")
    for name in SECTIONS:
        if name in results:
            lines += MODULES[name].summary(results[name])
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Driver.


def run_suite(
    *,
    scale: str = "full",
    out: Path | None = None,
    only: tuple[str, ...] = SECTIONS,
    nt_venv: Path | None = None,
    rerun_anchors: bool = False,
    anchor_widths=(256, 1024, 4096),
    data_dir: Path | None = DATA_DIR,
    note: str = "",
) -> Path:
    """Run the sections of `only` at `scale` ("full", "quick" or "smoke"); return the output folder.

    `data_dir` holds `mnist/` for the MNIST real NTKs of a full run (skipped, and said so, without it).
    """
    cfg = SCALES[scale]
    default = HERE / "results" / ("suite" if scale == "full" else f"suite-{scale}")
    out = default if out is None else Path(out).resolve()  # workers run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for name in SECTIONS:
        if name not in only:
            continue
        h.log(f"section {name} ({scale})")
        t0 = time.perf_counter()
        if name == "work-precision":
            result = work_precision.section(cfg, out, data_dir)
        elif name == "width":
            result = width.section(cfg["width"])
        elif name == "kernel-size":
            result = kernel_size.section(cfg["kernel"])
        elif name == "ensembles":
            result = ensembles.section(cfg["ensembles"])
        else:
            result = anchors.section(
                quick=scale != "full", nt_venv=nt_venv, rerun=rerun_anchors, widths=anchor_widths
            )
        stamp = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": h.machine() | {"load_average_at_end": os.getloadavg()},
            "note": note,
        }
        result = {"section": name, "scale": scale, "seconds": time.perf_counter() - t0, "run": stamp} | result
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
        results[name] = result
    meta = {
        "scale": scale,
        "sections": list(results),
        "seconds": time.perf_counter() - start,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": h.machine() | {"load_average_at_end": os.getloadavg()},
        "note": note,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    render(out)
    h.log(f"done in {meta['seconds']:.0f} s: {out / 'summary.md'}")
    return out


def render(out: Path) -> Path:
    """Draw the figures and write `summary.md` from the JSON files in `out` (rerunnable alone)."""
    out = Path(out)
    meta = json.loads((out / "meta.json").read_text())
    # Every section found in `out`: a section rerun alone (--only) keeps the others' results.
    results = {
        name: json.loads((out / f"{name}.json").read_text())
        for name in SECTIONS
        if (out / f"{name}.json").exists()
    }
    for name, result in results.items():
        if hasattr(MODULES[name], "render"):
            results[name] = MODULES[name].render(result, out)
    (out / "summary.md").write_text(_summary(results, meta))
    return out / "summary.md"
