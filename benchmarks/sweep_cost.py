"""The whole depth-3 protocol sweep on this machine, before and after ensembles.

Reruns a committed width sweep (default `mnist-protocol-depth3`: widths 8-4096, 5 seeds, calibrated
lr, the exact minimum, 16 records) width by width into scratch stores, each step in a fresh process
(`_harness.spawn`), compilation included:
1. the calibration: the pilots on seed 0 (`sweep.calibrate`; the same code in both modes), timed;
2. the width's seeds with `ensemble = false` (one after another: the sweep before ensembles) and with
   `ensemble = true` (one vmapped program), each into a fresh store holding the calibration of 1, so
   neither repeats the pilots. The two modes alternate which goes first from width to width, so that
   a drift in the machine's load falls on both.
Before = pilots + loop, after = pilots + ensemble, summed over widths. Also written: whether the
calibration equals the committed store's (`--committed`), and the largest difference between the two
modes' per-seed minima (epoch and test loss), which `train_ensemble` promises equal.

Usage: nice -n 5 python -m benchmarks.sweep_cost [--config mnist-protocol-depth3] [--widths 8,64]
    [--data-dir DIR] [--committed benchmarks/results/mnist-protocol-depth3.zarr.zip]
    [--out benchmarks/results/sweep_cost.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import _harness as h

DATA_DIR = h.ROOT.parent / "shared" / "data"
RESULTS = h.ROOT / "benchmarks" / "results"


def _config(args: dict, store: str, **overrides):
    from ntkspec.experiments.config import load_config

    return load_config(
        args["config"], widths=[args["width"]], data_dir=args["data_dir"], store=store, **overrides
    )


def _step(args: dict) -> dict:
    """One step, in a worker process: the calibration of a width, or its seeds in one mode."""
    import ntkspec
    from ntkspec.experiments import store, sweep
    from ntkspec.experiments.config import runs

    with tempfile.TemporaryDirectory() as scratch:
        if args["step"] == "calibrate":
            config = _config(args, f"{scratch}/pilots.zarr")
            root = store.open_store(config.store_path, config.to_dict())
            dataset = ntkspec.data.load(config.dataset, config.data_dir)
            start = time.perf_counter()
            calibration = sweep.calibrate(config, runs(config)[0], dataset, root)
            return {"seconds": time.perf_counter() - start, "calibration": calibration}
        config = _config(args, f"{scratch}/{args['step']}.zarr", ensemble=args["step"] == "ensemble")
        root = store.open_store(config.store_path, config.to_dict())
        store.write_calibration(root, f"w{args['width']}", args["calibration"])
        start = time.perf_counter()
        summary = sweep.run_sweep(config)
        seconds = time.perf_counter() - start
        ds = ntkspec.open_sweep(config.store_path).isel(width=0)
        return {
            "seconds": seconds,
            "statuses": ds["status"].values.tolist(),
            "failed": list(summary.failed),
            "epoch_runs": int(ds["stopped_epoch"].sum()),
            "measure_seconds": float(ds["spectrum_seconds"].sum() + ds["spectrum_seconds_at_min"].sum()),
            "min_test_loss_epoch": ds["min_test_loss_epoch"].values.tolist(),
            "min_test_loss": ds["min_test_loss"].values.tolist(),
        }


def _committed_lr(path: Path, width: int) -> float | None:
    if not path.exists():
        return None
    from ntkspec.experiments.store import read_calibration

    stored = read_calibration(path, f"w{width}")
    return None if stored is None else stored["lr"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_step"]:  # one step in a fresh process
        print(json.dumps(_step(json.loads(argv[1]))), flush=True)
        return
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", default="mnist-protocol-depth3")
    parser.add_argument("--widths", default=None, help="comma-separated (default: the config's)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with mnist/")
    parser.add_argument("--committed", type=Path, default=None, help="store whose calibration to compare")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_cost.json")
    args = parser.parse_args(argv)

    from ntkspec.experiments.config import load_config

    config = load_config(args.config)
    widths = [int(w) for w in args.widths.split(",")] if args.widths else list(config.widths)
    committed = args.committed or RESULTS / f"{config.name}.zarr.zip"
    rows = []
    for i, width in enumerate(widths):
        common = {"config": args.config, "width": width, "data_dir": str(args.data_dir)}
        row = {
            "width": width,
            "calibrate": h.spawn(
                ["benchmarks.sweep_cost", "_step", json.dumps(common | {"step": "calibrate"})]
            ),
        }
        h.log(f"w={width} calibrate: {json.dumps(row['calibrate'])}")
        modes = ("loop", "ensemble") if i % 2 == 0 else ("ensemble", "loop")
        if "error" in row["calibrate"]:
            modes = ()
        else:
            calibration = row["calibrate"]["calibration"]
            row["committed_lr"] = _committed_lr(committed, width)
        for mode in modes:
            task = common | {"step": mode, "calibration": calibration}
            row[mode] = h.spawn(["benchmarks.sweep_cost", "_step", json.dumps(task)])
            h.log(f"w={width} {mode}: {json.dumps({k: v for k, v in row[mode].items() if 'min_' not in k})}")
        if modes and "error" not in row["loop"] and "error" not in row["ensemble"]:
            row["speedup"] = row["loop"]["seconds"] / row["ensemble"]["seconds"]
            for field, name in (
                ("min_test_loss_epoch", "max_epoch_difference"),
                ("min_test_loss", "max_loss_difference"),
            ):
                pairs = zip(row["loop"][field], row["ensemble"][field], strict=True)
                row[name] = max(abs(a - b) for a, b in pairs)
        rows.append(row)
        h.write_json(args.out, _result(config, rows))  # after each width: a stopped run keeps it
    print(json.dumps(_result(config, rows)["total"]), args.out)


def _result(config, rows: list[dict]) -> dict:
    finished = [row for row in rows if "speedup" in row]
    pilots = sum(row["calibrate"]["seconds"] for row in finished)
    loop = sum(row["loop"]["seconds"] for row in finished)
    ensemble = sum(row["ensemble"]["seconds"] for row in finished)
    return {
        "benchmark": "sweep_cost",
        "config": config.name,
        "command": "python -m benchmarks.sweep_cost " + " ".join(sys.argv[1:]),
        "rows": rows,
        "total": {
            "widths": [row["width"] for row in finished],
            "pilot_seconds": pilots,
            "loop_seconds": loop,
            "ensemble_seconds": ensemble,
            "before_seconds": pilots + loop,
            "after_seconds": pilots + ensemble,
            "speedup": (pilots + loop) / (pilots + ensemble) if finished else None,
        },
        "machine": h.machine(),
    }


if __name__ == "__main__":
    main()
