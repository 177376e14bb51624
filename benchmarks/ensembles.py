"""Suite section "ensembles": sweep throughput with the seeds of a point in one program, against the
per-seed loop.

One sweep point, 5 seeds, trained and measured by `run_sweep` (public API) with `ensemble = true`
(`train_ensemble`: the seeds' parameters, Adam states and data stacked, every step `vmap`-ed) and
with `ensemble = false` (one seed after another; both share compiled programs across seeds). Cases:
the study MLP 784 -> w -> w -> 10 (depth 3) at each width on 100 MNIST training samples, and the
data-scaling network (depth 4, width 8) on `n_train` samples; full-batch Adam at a fixed learning
rate, no early stop, the trace every `eval_every` epochs and the log-spaced records (exact spectra
of an `n_ntk`-sample NTK batch) of the config. MNIST is the t10k file in `DATA_DIR` (no download);
without it, digits (64 inputs).

Each (case, mode) runs in a fresh process (`_harness.spawn_task`): one sweep into a scratch store
(compilation included: "cold"), then the same sweep into fresh stores `repeats` times, the fastest
kept ("warm": the compiled programs reused; best of 3 up to w = 512, one at w = 4096; settings may
set `repeats` for every case). Settings may also name the `platform` the workers run on ("cpu", or
"cuda" on a GPU machine), the `data_dir` holding mnist/, and a `timeout` per worker (seconds); a
`data_scaling` of None leaves the data-scaling case out.
Throughput: the whole sweep's (store writes included); training, epochs x runs per second of the
sweep's time outside the records; records (each run's record at its minimum included) per second
of the time spent in them (`Record.spectrum_seconds`: `Measure.__call__`, a
per-seed loop in both modes). The ratios (ensemble / loop) are the figures to read on a shared
machine.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks import _harness as h

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
MODES = {"ensemble": True, "loop": False}


def _config(case: dict, store: Path):
    from ntkspec.experiments.config import SweepConfig

    data_dir = Path(case.get("data_dir") or DATA_DIR)
    mnist = (data_dir / "mnist").is_dir()
    values = {
        "name": "ensembles",
        "dataset": "mnist" if mnist else "digits",
        "data_dir": str(data_dir) if mnist else None,
        "depth": case["depth"],
        "widths": [case["width"]],
        "seeds": case["seeds"],
        "n_train": case["n_train"],
        "n_ntk": case["n_ntk"],
        "n_test": case["n_test"],
        "lr": 1e-3,
        "epochs": case["epochs"],
        "eval_every": case["eval_every"],
        "n_records": case["n_records"],
        "top_k": 5,
        "method": "exact",
        "ensemble": case["ensemble"],
        "store": str(store),
    }
    if case["sweep"] == "data_size":
        values |= {"kind": "data_size", "data_sizes": [case["n_train"]]}
    return SweepConfig.from_dict({k: v for k, v in values.items() if v is not None})


def task(task: dict) -> dict:
    """One (case, mode), in a worker process: a cold sweep, then a warm one, timed."""
    import ntkspec
    from ntkspec.experiments.sweep import run_sweep

    row = {}
    with tempfile.TemporaryDirectory() as scratch:
        for i, phase in enumerate(["cold"] + ["warm"] * task["repeats"]):
            config = _config(task, Path(scratch) / f"{i}.zarr")
            start = time.perf_counter()
            summary = run_sweep(config)
            seconds = time.perf_counter() - start
            ds = ntkspec.open_sweep(config.store_path)
            records = int(ds["n_records"].sum()) + int((ds["status"] == "complete").sum())
            epochs = int(ds["stopped_epoch"].sum())
            measuring = float(ds["spectrum_seconds"].sum() + ds["spectrum_seconds_at_min"].sum())
            out = {
                "seconds": seconds,
                "measure_seconds": measuring,
                "sweeps_per_hour": 3600 / seconds,
                "epoch_runs_per_s": epochs / (seconds - measuring),
                "records_per_s": records / measuring,
                "records": records,
                "epoch_runs": epochs,
                "statuses": sorted(set(ds["status"].values.ravel().tolist())),
                "failed": list(summary.failed),
            }
            if phase not in row or seconds < row[phase]["seconds"]:
                row[phase] = out
    row["dataset"] = config.dataset
    return row


def _cases(c: dict) -> list[dict]:
    common = {k: c[k] for k in ("seeds", "n_ntk", "n_test", "epochs", "eval_every", "n_records")}
    common |= {k: c[k] for k in ("platform", "data_dir") if c.get(k) is not None}
    cases = [
        common
        | {"sweep": "width", "depth": 3, "width": w, "n_train": c["n_train"], "repeats": 3 if w <= 512 else 1}
        for w in c["widths"]
    ]
    if c.get("data_scaling") is not None:
        cases.append(
            common
            | {"sweep": "data_size", "depth": 4, "width": 8, "n_train": c["data_scaling"], "repeats": 3}
        )
    return [case | {"repeats": c.get("repeats", case["repeats"])} for case in cases]


def section(c: dict) -> dict:
    """The section at the settings `c` (`suite.SCALES[...]["ensembles"]`): one worker per (case, mode)."""
    rows = []
    for case in _cases(c):
        row = dict(case)
        for mode, ensemble in MODES.items():
            out = h.spawn_task({"kind": "ensembles", **case, "ensemble": ensemble}, timeout=c.get("timeout"))
            row[mode] = out
            h.log(
                f"ensembles: {case['sweep']} w={case['width']} n={case['n_train']} {mode}: {json.dumps(out)}"
            )
        if all("warm" in row[mode] for mode in MODES):
            row["ratio"] = {
                phase: {
                    rate: row["ensemble"][phase][rate] / row["loop"][phase][rate]
                    for rate in ("sweeps_per_hour", "epoch_runs_per_s", "records_per_s")
                }
                for phase in ("cold", "warm")
            }
        rows.append(row)
    return {"settings": c, "rows": rows}


def summary(r: dict) -> list[str]:
    """The section's part of summary.md."""
    c = r["settings"]
    lines = [
        "## Ensembles",
        "",
        f"One sweep point, {c['seeds']} seeds, `run_sweep` with `ensemble = true` (one vmapped program) "
        f"against `ensemble = false` (seed after seed): {c['epochs']} epochs of full-batch Adam, the "
        f"trace every {c['eval_every']} epochs, {c['n_records']} log-spaced records of an "
        f"{c['n_ntk']}-sample NTK batch (exact spectra) plus one at each minimum, store writes "
        "included. Warm: compiled programs reused (later sweeps in the same process, the fastest); cold: the "
        "first sweep, compilation included. Training = epochs·runs per second of the time outside the "
        "records; records per second of the time in them; ratio = ensemble / loop.",
        "",
    ]
    rows = []
    for row in r["rows"]:
        name = f"depth {row['depth']}, w = {row['width']}, n = {row['n_train']}"
        if "ratio" not in row:
            rows.append(
                [name, "failed: " + str(row.get("ensemble", {}).get("error") or row["loop"].get("error"))]
            )
            continue
        e, loop = row["ensemble"]["warm"], row["loop"]["warm"]
        rows.append(
            [
                name,
                f"{loop['seconds']:.1f} s",
                f"{e['seconds']:.1f} s",
                f"{row['ratio']['warm']['sweeps_per_hour']:.2f}×",
                f"{loop['epoch_runs_per_s']:.0f}",
                f"{e['epoch_runs_per_s']:.0f}",
                f"{row['ratio']['warm']['epoch_runs_per_s']:.2f}×",
                f"{loop['records_per_s']:.2f}",
                f"{e['records_per_s']:.2f}",
                f"{row['ratio']['warm']['records_per_s']:.2f}×",
                f"{row['ratio']['cold']['sweeps_per_hour']:.2f}×",
            ]
        )
    header = [
        "network",
        "loop sweep",
        "ensemble sweep",
        "speed-up",
        "loop epochs·runs/s",
        "ensemble epochs·runs/s",
        "ratio",
        "loop records/s",
        "ensemble records/s",
        "ratio",
        "speed-up (cold)",
    ]
    return lines + h.table(header, rows) + [""]
