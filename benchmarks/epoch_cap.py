"""What an epoch cap cuts off a calibrated sweep: the same runs trained under two caps, paired by run.

A run of the study's protocol trains until 200 epochs (`patience`) past its lowest test loss, or to
the config's `epochs`, the cap. A run stopped by the cap may have had further to fall. Two stores of
one sweep's draws, initialisations and learning rates (e.g. `mnist-data-scaling` and
`mnist-data-scaling-cap2400`, its small sizes with the cap doubled) give, per swept value: how many
runs the first cap stopped, how many of those found their minimum past it under the second, the
mean minimum test loss under each cap, and the mean paired change ± its standard error. Runs the
first cap did not stop should be the same in both; their largest difference (loss, epoch of the
minimum) is the floor set by rounding (ensembles of other sizes sum in another order).

Usage: python -m benchmarks.epoch_cap CAPPED UNCAPPED [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from benchmarks import _harness as h
from ntkspec.experiments.analysis import read_store

FIELDS = ("min_test_loss", "min_test_loss_epoch", "stopped_epoch")


@dataclasses.dataclass(frozen=True)
class CapRow:
    """One swept value. `loss_*`: mean minimum test loss under each cap; `change`: mean paired
    (uncapped − capped) ± `change_se`; `change_at_cap`: its mean over the runs the cap stopped;
    `floor_loss`, `floor_epoch`: the largest |difference| over the runs it did not stop."""

    value: float
    runs: int
    at_cap: int
    past_cap: int
    loss_capped: float
    loss_uncapped: float
    change: float
    change_se: float
    change_at_cap: float
    floor_loss: float
    floor_epoch: int


def complete_runs(path: str | Path) -> tuple[dict[str, dict], int, str]:
    """The complete runs' attributes by name, the config's cap, and the swept attribute's name."""
    sweep = read_store(path)
    runs = {name: run.attrs for name, run in sweep.runs.items() if run.status == "complete"}
    return runs, int(sweep.config["epochs"]), sweep.x_name


def compare_caps(capped: dict[str, dict], uncapped: dict[str, dict], cap: int, x_name: str) -> list[CapRow]:
    """Pair the runs both stores hold by name; one row per swept value (see `CapRow`)."""
    shared = [name for name in capped if name in uncapped]
    if not shared:
        raise ValueError("the two stores share no complete run: they are not the same sweep's draws")
    rows = []
    for value in sorted({float(capped[name][x_name]) for name in shared}):
        names = [name for name in shared if float(capped[name][x_name]) == value]
        a, b = (
            {key: np.array([float(runs[n][key]) for n in names]) for key in FIELDS}
            for runs in (capped, uncapped)
        )
        stopped = a["stopped_epoch"] >= cap
        change = b["min_test_loss"] - a["min_test_loss"]
        free = ~stopped
        rows.append(
            CapRow(
                value,
                len(names),
                int(stopped.sum()),
                int((stopped & (b["min_test_loss_epoch"] > cap)).sum()),
                float(a["min_test_loss"].mean()),
                float(b["min_test_loss"].mean()),
                float(change.mean()),
                float(change.std(ddof=1) / np.sqrt(len(names))) if len(names) > 1 else np.nan,
                float(change[stopped].mean()) if stopped.any() else np.nan,
                float(np.abs(change[free]).max()) if free.any() else np.nan,
                int(np.abs(b["min_test_loss_epoch"] - a["min_test_loss_epoch"])[free].max())
                if free.any()
                else 0,
            )
        )
    return rows


def markdown(rows: list[CapRow], x_name: str, caps: tuple[int, int]) -> str:
    """The rows as a Markdown table."""
    low, high = caps
    headers = [x_name, "runs", f"stopped at {low}", f"minimum past {low} at cap {high}"]
    headers += [f"loss, cap {low}", f"loss, cap {high}", "change ± s.e.", "change, runs stopped"]
    headers += ["runs not stopped: max abs Δ loss, Δ epoch"]
    cells = []
    for r in rows:
        line = [f"{r.value:g}", str(r.runs), str(r.at_cap), str(r.past_cap)]
        line += [f"{r.loss_capped:.4f}", f"{r.loss_uncapped:.4f}", f"{r.change:+.4f} ± {r.change_se:.4f}"]
        line += [f"{r.change_at_cap:+.4f}", f"{r.floor_loss:.1e}, {r.floor_epoch}"]
        cells.append(line)
    return "\n".join(h.table(headers, cells, right_from=0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.epoch_cap", description=__doc__.splitlines()[0]
    )
    parser.add_argument("capped", type=Path, help="store trained under the smaller cap")
    parser.add_argument("uncapped", type=Path, help="store of the same runs under a larger cap")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    args = parser.parse_args(argv)
    capped, cap, x_name = complete_runs(args.capped)
    uncapped, larger, _ = complete_runs(args.uncapped)
    if larger <= cap:
        parser.error(f"UNCAPPED's cap is {larger} epochs; expected more than CAPPED's {cap}")
    rows = compare_caps(capped, uncapped, cap, x_name)
    print(markdown(rows, x_name, (cap, larger)))
    if args.out is not None:
        record = {"capped": str(args.capped), "uncapped": str(args.uncapped), "caps": [cap, larger]}
        record["rows"] = [dataclasses.asdict(r) for r in rows]
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
