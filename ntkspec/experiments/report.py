"""Rendering and serialisation of an analysis: Markdown, Rich renderables, CSV and JSON.

Nothing is computed here: every number comes from `analysis.Analysis`. The Rich table wraps: its
quantity columns are laid out in as many stacked blocks as the console width needs, each block
repeating the swept value, so that an 80-column terminal shows every cell whole (`wide=True` puts them
all in one table; the CSV has every column).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ntkspec.experiments.records import KINDS
from ntkspec.experiments.store import stem
from ntkspec.experiments.summaries import QUANTITIES

_COUNTS = ("runs", "diverged", "incomplete")


def _pm(mean: float, stderr: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3g}" if not np.isfinite(stderr) else f"{mean:.3g} ± {stderr:.2g}"


@dataclasses.dataclass(frozen=True)
class Table:
    """Rows of per-group statistics (one dict per width or data size), with `columns` in order.

    Each row: the width (or `n_train`), `runs` analysed, `diverged`, `incomplete` (still running, or
    complete but unusable), then every quantity of `QUANTITIES` and its standard error `<name>_se`.
    """

    columns: list[str]
    rows: list[dict[str, float | int]]

    def formatted(self) -> tuple[list[str], list[list[str]]]:
        """Headers and cells as text: 'mean ± stderr' for every quantity."""
        x_name = self.columns[0]
        headers = [x_name, *_COUNTS, *QUANTITIES.values()]
        cells = []
        for row in self.rows:
            line = [f"{row[x_name]:g}", *(str(row[k]) for k in _COUNTS)]
            line += [_pm(row[q], row[f"{q}_se"]) for q in QUANTITIES]
            cells.append(line)
        return headers, cells

    def to_markdown(self) -> str:
        headers, cells = self.formatted()
        return "\n".join(_markdown_table(headers, cells, "r" * len(headers)))

    def to_rich(self, title: str | None = None, width: int | None = None):
        """The formatted cells as Rich tables: one if `width` is None, else as many stacked tables as
        keep every line within `width` columns, each repeating the first (swept value) column."""
        return _rich_blocks(*self.formatted(), title, width)

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def _markdown_table(headers: list[str], cells: list[list[str]], align: str) -> list[str]:
    """The lines of a Markdown table; `align` has one letter per column, "r" (right) or "l" (left)."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return ["| " + " | ".join(headers) + " |", rule, *("| " + " | ".join(line) + " |" for line in cells)]


def _rich_blocks(
    headers: list[str], cells: list[list[str]], title: str | None, width: int | None, first: str = "right"
):
    """Rich tables of `cells`: one if `width` is None, else as many stacked tables as keep every line
    within `width` columns, each repeating the first column (justified `first`)."""
    from rich.console import Group
    from rich.table import Table as RichTable

    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    blocks, current = [], []
    for i in range(1, len(headers)):
        used = sum(widths[j] + 3 for j in (0, *current, i)) + 1  # a box: 3 per column, 1 at the end
        if width is not None and current and used > width:
            blocks.append(current)
            current = []
        current.append(i)
    blocks.append(current)
    tables = []
    for number, block in enumerate(blocks):
        table = RichTable(title=title if number == 0 else None)
        for j in (0, *block):
            table.add_column(headers[j], justify="right" if j else first, no_wrap=True)
        for line in cells:
            table.add_row(*(line[j] for j in (0, *block)))
        tables.append(table)
    return tables[0] if len(tables) == 1 else Group(*tables)


def _interval(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "–"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def kernel_table(scaling) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the data-scaling exponents: one row per model (network, then kernels)."""
    headers = ["model", "error ∝ n^b: b [CI]", "b(net) − b [CI]", "MSE ∝ n^b: b [CI]", "error at n_max"]
    cells = []
    for model in scaling.models:
        fits = [scaling.error_fits.get(model), scaling.mse_fits.get(model)]
        shown = [_interval(f.exponent, f.ci_low, f.ci_high) if f else "–" for f in fits]
        difference = _interval(*scaling.differences[model]) if model in scaling.differences else "–"
        means = scaling.error[model].mean
        last = f"{means[-1]:.3g}" if means.size and np.isfinite(means[-1]) else "–"
        cells.append([scaling.labels[model], shown[0], difference, shown[1], last])
    return headers, cells


def calibration_table(analysis) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of a calibrated sweep: per swept value, the learning rate, its pilots and
    the median (range) over seeds of the epoch of the minimum test loss, against the window; how
    many runs trained to the epoch cap; Pearson's r over seeds between that epoch and the loss."""
    low, high = analysis.calibration[0].window
    headers = [analysis.x_name, "calibration", "lr", "pilots: lr → epoch of min"]
    headers += ["median epoch of min [range]", f"median in [{low}, {high}]", "runs at the cap"]
    headers += ["r(epoch of min, min loss)"]
    cells = []
    for c in analysis.calibration:
        pilots = ", ".join(f"{lr:.2g} → {epoch}" for lr, epoch in c.pilots) or "–"
        spread = (
            f"{c.median_epoch:g} [{c.min_epochs.min():g}, {c.min_epochs.max():g}]"
            if c.min_epochs.size
            else "–"
        )
        inside = ("yes" if c.inside else "no") if c.min_epochs.size else "–"
        lr = f"{c.lr:.3g}" if c.lr is not None else "–"
        runs = f"{c.at_cap} of {c.min_epochs.size}" if c.min_epochs.size else "–"
        r = f"{c.epoch_loss_correlation:.2f}" if np.isfinite(c.epoch_loss_correlation) else "–"
        cells.append([f"{c.value:g}", c.status, lr, pilots, spread, inside, runs, r])
    return headers, cells


def _kernel_notes(scaling) -> list[str]:
    """One line per kernel: does the network's test error fall faster with n than the kernel's?"""
    lines = []
    for name, (diff, low, high) in scaling.differences.items():
        if scaling.n_seeds < 2:
            verdict = "one seed: no interval"
        elif high < 0:
            verdict = "the network scales better"
        elif low > 0:
            verdict = "the kernel scales better"
        else:
            verdict = "not resolved (the interval holds 0)"
        lines.append(
            f"- network against {scaling.labels[name]}: "
            f"b(net) − b = {diff:.2f} [{low:.2f}, {high:.2f}], {verdict}"
        )
    return lines + [f"- not fitted, {name}: {why}" for name, why in scaling.not_fitted.items()]


def markdown(analysis) -> str:
    """The table, then the runs found, the fits, the breakpoints and the skipped runs, as Markdown."""
    symbol = KINDS[analysis.sweep.kind].symbol
    lines = [analysis.table.to_markdown(), "", f"- {_found(analysis)}"]
    for name, fit in analysis.fits.items():
        span = f"{fit.x_min:g}-{fit.x_max:g}"
        flipped = (
            " (of -dT/dlnL)" if name == "adaptation_rate_at_min" and analysis.adaptation_sign < 0 else ""
        )
        lines.append(f"- {name}{flipped}: {fit.label(symbol)}, fitted on {symbol} = {span}")
    for name, found in analysis.breakpoints.items():
        slopes = ", ".join(
            f"{left:.2f} -> {right:.2f}"
            for left, right in zip(found.slopes_left, found.slopes_right, strict=True)
        )
        lines.append(f"- breakpoint {name}: {found.label(symbol)}, log-log slopes {slopes}")
    lines += [f"- not fitted, {name}: {why}" for name, why in analysis.not_fitted.items()]
    lines += [
        f"- skipped {s['name']} ({s['status']})" + (f": {s['message']}" if s["message"] else "")
        for s in analysis.skipped
    ]
    if analysis.calibration:
        headers, cells = calibration_table(analysis)
        lines += ["", "Learning rate per value, calibrated by the study's rule (App. D.1):", ""]
        lines += _markdown_table(headers, cells, "rlrlrlrr")
    if analysis.kernels is not None:
        headers, cells = kernel_table(analysis.kernels)
        lines += ["", "Data scaling against the kernels (test error at the minimum test loss; 95 % CIs):", ""]
        lines += _markdown_table(headers, cells, "l" + "r" * (len(headers) - 1))
        lines += [""] + _kernel_notes(analysis.kernels)
    return "\n".join(lines)


def _found(analysis) -> str:
    found = len(analysis.runs) + len(analysis.skipped)
    asked = analysis.expected_runs
    of = f" of the {asked} the config asks for" if asked is not None else ""
    return f"found {found} run(s){of}: {len(analysis.runs)} analysed, {len(analysis.skipped)} skipped"


def rich(analysis, width: int | None = None, wide: bool = False):
    """Rich renderable: the table (wrapped to `width` unless `wide`), then the notes as text."""
    from rich.console import Group
    from rich.text import Text

    title = f"{analysis.sweep.path.name}: {analysis.sweep.kind} sweep, {len(analysis.runs)} runs"
    notes = markdown(analysis).split("\n\n")[1]  # plain text: wraps, never cropped
    parts = [analysis.table.to_rich(title=title, width=None if wide else width), Text(notes)]
    if analysis.calibration:
        heading = "learning rate per value, calibrated by the study's rule (App. D.1)"
        parts.append(_rich_blocks(*calibration_table(analysis), heading, None if wide else width))
    if analysis.kernels is not None:
        heading = "data scaling against the kernels (95 % CIs)"
        blocks = _rich_blocks(*kernel_table(analysis.kernels), heading, None if wide else width, "left")
        parts.append(blocks)
        parts.append(Text("\n".join(_kernel_notes(analysis.kernels))))
    return Group(*parts)


def as_dict(analysis) -> dict[str, Any]:
    """JSON-ready summary (NaN as null)."""
    x_name = analysis.x_name
    return _jsonable(
        {
            "store": str(analysis.sweep.path),
            "config": analysis.sweep.config,
            "kind": analysis.sweep.kind,
            "x": x_name,
            "expected_runs": analysis.expected_runs,
            "table": analysis.table.rows,
            "runs": [
                {
                    "name": r.name,
                    x_name: r.attrs[x_name],
                    "seed": r.seed,
                    **analysis.summaries[r.name].as_dict(),
                }
                for r in analysis.runs
            ],
            "skipped": analysis.skipped,
            "fits": {k: dataclasses.asdict(v) for k, v in analysis.fits.items()},
            "breakpoints": {k: dataclasses.asdict(v) for k, v in analysis.breakpoints.items()},
            "not_fitted": analysis.not_fitted,
            "adaptation_sign": analysis.adaptation_sign,
            "kernels": None if analysis.kernels is None else _kernels_dict(analysis.kernels),
            "calibration": [
                dataclasses.asdict(c)
                | {
                    "median_epoch": c.median_epoch,
                    "inside": c.inside,
                    "epoch_loss_correlation": c.epoch_loss_correlation,
                }
                for c in analysis.calibration
            ],
        }
    )


def _kernels_dict(scaling) -> dict[str, Any]:
    return {
        "models": list(scaling.models),
        "labels": scaling.labels,
        "test_error": {m: e._asdict() for m, e in scaling.error.items()},
        "test_mse": {m: e._asdict() for m, e in scaling.mse.items()},
        "error_fits": {m: dataclasses.asdict(f) for m, f in scaling.error_fits.items()},
        "mse_fits": {m: dataclasses.asdict(f) for m, f in scaling.mse_fits.items()},
        "differences": {
            m: dict(zip(("difference", "ci_low", "ci_high"), d, strict=True))
            for m, d in scaling.differences.items()
        },
        "not_fitted": scaling.not_fitted,
        "n_seeds": scaling.n_seeds,
    }


def write(analysis, out_dir: str | Path | None = None) -> list[Path]:
    """Write `<store>.table.csv` and `<store>.analysis.json` beside the store (or in `out_dir`)."""
    name = stem(analysis.sweep.path)
    where = Path(out_dir) if out_dir is not None else analysis.sweep.path.parent
    where.mkdir(parents=True, exist_ok=True)
    csv_path = analysis.table.to_csv(where / f"{name}.table.csv")
    json_path = where / f"{name}.analysis.json"
    json_path.write_text(json.dumps(as_dict(analysis), indent=2, allow_nan=False))
    return [csv_path, json_path]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
