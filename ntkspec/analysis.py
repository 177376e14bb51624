"""Derived quantities of a width (or data-size) sweep: run summaries, ensembles, fits, transition.

Per run (records r = 0 .. n-1 of one training run):

* the minimum test loss and the record r* where it is reached;
* T0 = tr K at the first record (initialisation) and the trace ratio (T(r*) - T0) / T0;
* effective rank and cosine effective rank at r*;
* the alignment A(K0, K*) of the NTK at r* with the one at initialisation (1 - A: how far the kernel
  moved; NaN for stores recorded before it was);
* the adaptation rate dT / d ln L_train at r*: T and ln L_train are smoothed by a centred running
  mean over `window` records (by default a tenth of the run's records), then differentiated,
  dT/dlnL = (dT/dt) / (dlnL/dt) with `np.gradient`.

Across seeds: means and standard errors per width (or per training-set size). Scaling laws are
fitted as straight lines in log-log space to the per-width means; the transition width is the
breakpoint of a continuous two-segment line in log-log space (a "hinge" or segmented regression;
Muggeo, "Estimating regression models with unknown break-points", Stat. Med. 2003).

Confidence intervals come from a paired bootstrap over seeds (Efron & Tibshirani, "An Introduction
to the Bootstrap", 1993): seed labels are resampled with replacement, the per-width means
recomputed and the fit repeated, so that any correlation between widths sharing a seed (the same
data subset) is kept. Intervals are Hesterberg's expanded percentile intervals, which correct the
plain percentile interval's under-coverage for the few seeds of a sweep (measured on synthetic
sweeps with 4 and 10 seeds: 0.89-0.93 coverage at a nominal 0.95, against 0.85-0.89 for the plain
percentile interval).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize

from ntkspec._errors import bad_value

#: Per-run quantities tabulated and fitted, with human-readable labels.
QUANTITIES: dict[str, str] = {
    "min_test_loss": "min test loss",
    "min_epoch": "epoch of min",
    "test_accuracy_at_min": "test accuracy",
    "trace0": "T0",
    "trace_ratio": "trace ratio",
    "effective_rank_at_min": "eff. rank",
    "cosine_effective_rank_at_min": "cos. eff. rank",
    "adaptation_rate_at_min": "dT/dlnL",
    "init_alignment_at_min": "A(K0, K*)",
}

#: Quantities fitted with a power law against width (or data size).
FITTED = (
    "min_test_loss",
    "trace0",
    "adaptation_rate_at_min",
    "effective_rank_at_min",
    "trace_ratio",
)
_REQUIRED = ("epoch", "train_loss", "test_loss", "trace", "effective_rank")
_OPTIONAL = ("cosine_effective_rank", "test_accuracy", "init_alignment")
#: The run attribute each kind of sweep varies.
_KINDS = {"width": "width", "data_size": "n_train", "noise": "noise_fraction"}
#: Symbols of the swept quantities, for labels.
SYMBOLS = {"width": "w", "n_train": "n", "noise_fraction": "p"}
#: Kinds whose swept value is positive and scales: fitted with power laws in log-log space.
LOG_KINDS = ("width", "data_size")


# --------------------------------------------------------------------------------------- one run


def running_mean(values: ArrayLike, window: int) -> np.ndarray:
    """Centred running mean over `window` records, ignoring non-finite entries.

    Record i averages records [i - (window - 1) // 2, i + window // 2], clipped to the run, so the
    edges average fewer records and a run shorter than `window` is averaged over what it has. Unlike
    a trailing mean it does not lag; because it is linear, smoothing T and ln L with the same window
    keeps any linear relation T = a + b ln L exact.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise bad_value("values", f"an array of shape {x.shape}", "a 1-D array over records")
    if not (isinstance(window, int | np.integer) and window >= 1):
        raise bad_value("window", window, "an integer >= 1")
    n = x.size
    finite = np.isfinite(x)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    i = np.arange(n)
    lo = np.clip(i - (window - 1) // 2, 0, n)
    hi = np.clip(i + window // 2 + 1, 0, n)
    total, count = sums[hi] - sums[lo], counts[hi] - counts[lo]
    return _safe_divide(total, count)


def default_window(n_records: int) -> int:
    """Running-mean window of the adaptation rate: a tenth of the records, at least 1.

    Sweeps record 15-30 log-spaced times; a fixed wide window would average over most of such a run
    and flatten ln L wherever the records it spans do not change (NaN rates), so it scales with n.
    """
    return max(1, n_records // 10)


def adaptation_rate(trace: ArrayLike, train_loss: ArrayLike, window: int | None = None) -> np.ndarray:
    """dT / d ln L_train at every record, from running means of T and ln L_train over `window`.

    The derivative is the ratio of the record-wise gradients of the two smoothed curves, which
    equals `np.gradient(T_s, lnL_s)` where ln L is monotone, and is NaN where ln L is flat.
    Records with a non-positive or non-finite loss (a float32 cross-entropy that rounded to 0 on a
    memorised training set) are left out of the means. `window` defaults to `default_window(n)`.
    Fewer than two records give NaN.
    """
    t = np.asarray(trace, dtype=np.float64)
    loss = np.asarray(train_loss, dtype=np.float64)
    if t.shape != loss.shape or t.ndim != 1:
        raise bad_value(
            "trace, train_loss",
            f"shapes {t.shape} and {loss.shape}",
            "two 1-D arrays of equal length",
        )
    if t.size < 2:
        return np.full(t.shape, np.nan)
    positive = np.isfinite(loss) & (loss > 0)
    log_loss = np.log(np.where(positive, loss, 1.0))
    log_loss[~positive] = np.nan
    window = min(default_window(t.size) if window is None else window, t.size)
    dt = np.gradient(running_mean(t, window))
    dl = np.gradient(running_mean(log_loss, window))
    return _safe_divide(dt, dl)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Derived quantities of one run, taken at the record of minimum test loss (`min_index`)."""

    n_records: int
    min_index: int
    min_epoch: float
    min_test_loss: float
    test_accuracy_at_min: float
    train_loss_at_min: float
    trace0: float
    trace_at_min: float
    trace_ratio: float
    effective_rank_at_min: float
    cosine_effective_rank_at_min: float
    adaptation_rate_at_min: float
    init_alignment_at_min: float

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def run_summary(records: Mapping[str, ArrayLike], *, window: int | None = None) -> RunSummary:
    """Summarise one run from its record arrays.

    Parameters
    ----------
    records
        1-D arrays over records, all of one length: `epoch`, `train_loss`, `test_loss`, `trace`,
        `effective_rank`; optionally `cosine_effective_rank`, `test_accuracy` and `init_alignment`
        (NaN if absent).
        The first record is taken to be the initialisation (T0 = trace[0]).
    window
        Records in the running mean used for the adaptation rate (default: `default_window`).
    """
    missing = [name for name in _REQUIRED if name not in records]
    if missing:
        raise bad_value("records", f"arrays {sorted(records)}", f"also {missing}", "Pass every record array.")
    arrays = {
        name: np.asarray(value, dtype=np.float64)
        for name, value in records.items()
        if name in (*_REQUIRED, *_OPTIONAL)
    }
    n = arrays["epoch"].shape[0] if arrays["epoch"].ndim == 1 else -1
    shapes = {name: a.shape for name, a in arrays.items()}
    if n < 1 or any(shape != (n,) for shape in shapes.values()):
        raise bad_value("records", f"shapes {shapes}", "1-D arrays of one common, non-zero length")
    test_loss = arrays["test_loss"]
    if not np.any(np.isfinite(test_loss)):
        raise bad_value("records['test_loss']", "no finite value", "at least one finite test loss")
    i = int(np.nanargmin(np.where(np.isfinite(test_loss), test_loss, np.nan)))
    nan = np.full(n, np.nan)
    trace = arrays["trace"]
    t0 = float(trace[0])
    rate = adaptation_rate(trace, arrays["train_loss"], window)
    return RunSummary(
        n_records=n,
        min_index=i,
        min_epoch=float(arrays["epoch"][i]),
        min_test_loss=float(test_loss[i]),
        test_accuracy_at_min=float(arrays.get("test_accuracy", nan)[i]),
        train_loss_at_min=float(arrays["train_loss"][i]),
        trace0=t0,
        trace_at_min=float(trace[i]),
        trace_ratio=float(_safe_divide(np.float64(trace[i] - t0), np.float64(t0))),
        effective_rank_at_min=float(arrays["effective_rank"][i]),
        cosine_effective_rank_at_min=float(arrays.get("cosine_effective_rank", nan)[i]),
        adaptation_rate_at_min=float(rate[i]),
        init_alignment_at_min=float(arrays.get("init_alignment", nan)[i]),
    )


# ------------------------------------------------------------------------------- across seeds


class Ensemble(NamedTuple):
    """Mean, standard error (std / sqrt(count), ddof = 1) and count of the finite values per x."""

    x: np.ndarray  # (groups,) ascending
    mean: np.ndarray  # (groups,)
    stderr: np.ndarray  # (groups,)
    count: np.ndarray  # (groups,) int


def ensemble(x: ArrayLike, y: ArrayLike) -> Ensemble:
    """Group `y` by the values of `x` (sorted ascending); non-finite `y` are left out.

    The standard error is NaN for a group with fewer than two finite values.
    """
    x, y = _pair("x", x, "y", y)
    groups = np.unique(x)
    mean, stderr, count = (np.full(groups.size, np.nan) for _ in range(3))
    for j, g in enumerate(groups):
        values = y[(x == g) & np.isfinite(y)]
        count[j] = values.size
        if values.size:
            mean[j] = values.mean()
        if values.size > 1:
            stderr[j] = values.std(ddof=1) / math.sqrt(values.size)
    return Ensemble(groups, mean, stderr, count.astype(int))


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """y = prefactor * x**exponent fitted to per-group means in log-log space.

    `ci_low`, `ci_high` bound the exponent (expanded percentile bootstrap over seeds at `level`);
    `exponent_stderr` is the bootstrap standard deviation. The fit used the `n_points` groups with
    positive means inside [x_min, x_max]; `r2` is the coefficient of determination in log-log space.
    """

    exponent: float
    prefactor: float
    ci_low: float
    ci_high: float
    exponent_stderr: float
    prefactor_ci: tuple[float, float]
    r2: float
    x_min: float
    x_max: float
    n_points: int
    n_boot: int
    level: float

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self.prefactor * np.asarray(x, dtype=np.float64) ** self.exponent

    def label(self, symbol: str = "x") -> str:
        """e.g. '∝ x^-0.52 [-0.60, -0.45]'."""
        return f"∝ {symbol}^{self.exponent:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]"


def fit_power_law(
    x: ArrayLike,
    y: ArrayLike,
    seeds: ArrayLike,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator | int = 0,
    x_min: float | None = None,
    x_max: float | None = None,
) -> PowerLaw:
    """Fit log(mean y) = log(prefactor) + exponent * log(x) over the groups x; seed bootstrap CI.

    Parameters
    ----------
    x, y, seeds
        One entry per run: its width (or data size), the quantity, and its seed label. Runs with a
        non-finite `y` are left out; groups whose mean is not positive are left out of the fit.
    n_boot, level
        Bootstrap replicates (seed labels resampled with replacement) and the two-sided level.
    rng
        numpy Generator or seed for the bootstrap.
    x_min, x_max
        Fit only the groups inside this range (e.g. below a saturation point).
    """
    _check_level(n_boot, level)
    xs, values = _seed_matrix(x, y, seeds, x_min, x_max)
    u = np.log(xs)
    v, w = _log_means(values[None, 0])
    if int(w[0].sum()) < 2:
        raise bad_value(
            "x, y",
            f"{int(w[0].sum())} group(s) with a positive mean in range",
            "at least 2",
            "Widen [x_min, x_max] or add widths.",
        )
    slope, intercept = _line(u, v, w)
    fitted = intercept[0] + slope[0] * u
    resid = np.sum(w[0] * (v[0] - fitted) ** 2)
    mean_v = np.sum(w[0] * v[0]) / w[0].sum()
    total = np.sum(w[0] * (v[0] - mean_v) ** 2)
    boot_v, boot_w = _log_means(_paired_resample(values[0], _rng(rng), n_boot))
    b_slope, b_intercept = _line(u, boot_v, boot_w)
    ok = np.isfinite(b_slope)
    expanded = _expanded_level(level, values.shape[-1])
    lo, hi = _percentiles(b_slope[ok], expanded)
    p_lo, p_hi = _percentiles(b_intercept[ok], expanded)
    return PowerLaw(
        exponent=float(slope[0]),
        prefactor=float(np.exp(intercept[0])),
        ci_low=lo,
        ci_high=hi,
        exponent_stderr=float(np.std(b_slope[ok], ddof=1)) if ok.sum() > 1 else math.nan,
        prefactor_ci=(float(np.exp(p_lo)), float(np.exp(p_hi))),
        r2=float(1.0 - resid / total) if total > 0 else math.nan,
        x_min=float(xs[w[0] > 0].min()),
        x_max=float(xs[w[0] > 0].max()),
        n_points=int(w[0].sum()),
        n_boot=int(ok.sum()),
        level=level,
    )


@dataclasses.dataclass(frozen=True)
class Breakpoint:
    """Continuous two-segment line in log-log space, shared breakpoint for one or more series.

    Series s follows log y_s = a_s + b1_s min(u - u*, 0) + b2_s max(u - u*, 0), with u = log x and
    u* = log `x`. `ci` bounds the breakpoint (expanded percentile bootstrap over seeds);
    `slopes_left`, `slopes_right` (one per series) are the log-log slopes below and above it, with
    bootstrap intervals `*_ci` (series × 2); `values` are the fitted y_s at the breakpoint.
    """

    x: float
    ci: tuple[float, float]
    slopes_left: np.ndarray
    slopes_right: np.ndarray
    slopes_left_ci: np.ndarray
    slopes_right_ci: np.ndarray
    values: np.ndarray
    sse: float
    n_points: int
    n_boot: int
    level: float

    def __call__(self, x: ArrayLike, series: int = 0) -> np.ndarray:
        """Fitted curve of `series` at `x`."""
        d = np.log(np.asarray(x, dtype=np.float64)) - math.log(self.x)
        b1, b2 = self.slopes_left[series], self.slopes_right[series]
        return self.values[series] * np.exp(b1 * np.minimum(d, 0) + b2 * np.maximum(d, 0))

    def label(self, symbol: str = "x") -> str:
        return f"{symbol}* = {self.x:.3g} [{self.ci[0]:.3g}, {self.ci[1]:.3g}]"


def fit_breakpoint(
    x: ArrayLike,
    y: ArrayLike,
    seeds: ArrayLike,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator | int = 0,
    n_grid: int = 200,
) -> Breakpoint:
    """Least-squares breakpoint of a continuous piecewise-linear fit to log(mean y) against log x.

    For each candidate u* the fit is linear (intercept and two slopes per series), so the sum of
    squared residuals over all series is profiled on a grid of `n_grid` points between the second
    and the second-to-last group (at least two groups on each segment), and the best cell refined
    with `scipy.optimize.minimize_scalar` (bounded Brent). Bootstrap replicates use the grid alone.

    Parameters
    ----------
    x, seeds
        One entry per run: width (or data size) and seed label.
    y
        Per run, one value (shape (runs,)) or one value per series (shape (runs, series)) fitted
        with a shared breakpoint, e.g. effective rank and trace ratio for the transition width.
    """
    _check_level(n_boot, level)
    if n_grid < 2:
        raise bad_value("n_grid", n_grid, "an integer >= 2")
    xs, values = _seed_matrix(x, y, seeds)  # values: (series, groups, seeds)
    u = np.log(xs)
    v, w = _log_means(values[None])  # (1, series, groups)
    if np.any(w[0].sum(axis=-1) < 4):
        raise bad_value(
            "x, y",
            f"{w[0].sum(axis=-1).astype(int).tolist()} group(s) with positive means",
            "at least 4 per series for a two-segment fit",
            "Add widths to the sweep.",
        )
    bounds = (u[1], u[-2])
    candidates = np.linspace(*bounds, n_grid)
    sse, _ = _hinge(u, v, w, candidates)
    best = int(np.argmin(sse[0]))
    lo_u, hi_u = candidates[max(best - 1, 0)], candidates[min(best + 1, n_grid - 1)]
    refined = optimize.minimize_scalar(
        lambda c: _hinge(u, v, w, np.array([c]))[0][0, 0], bounds=(lo_u, hi_u), method="bounded"
    )
    u_star = float(refined.x) if refined.fun <= sse[0, best] else float(candidates[best])
    sse_star, coef = _hinge(u, v, w, np.array([u_star]))
    coef = coef[0, 0]  # (series, 3): value at u*, left slope, right slope
    series = range(coef.shape[0])

    bv, bw = _log_means(_paired_resample(values, _rng(rng), n_boot))
    enough = np.all(bw.sum(axis=-1) >= 4, axis=-1)
    b_sse, b_coef = _hinge(u, bv[enough], bw[enough], candidates)
    pick = np.argmin(b_sse, axis=1)
    b_u = _parabolic_minimum(candidates, b_sse, pick)
    b_coef = b_coef[np.arange(pick.size), pick]  # (boot, series, 3), at the nearest grid point
    expanded = _expanded_level(level, values.shape[-1])
    ci_u = _percentiles(b_u, expanded)
    return Breakpoint(
        x=math.exp(u_star),
        ci=(math.exp(ci_u[0]), math.exp(ci_u[1])),
        slopes_left=coef[:, 1],
        slopes_right=coef[:, 2],
        slopes_left_ci=np.array([_percentiles(b_coef[:, s, 1], expanded) for s in series]),
        slopes_right_ci=np.array([_percentiles(b_coef[:, s, 2], expanded) for s in series]),
        values=np.exp(coef[:, 0]),
        sse=float(sse_star[0, 0]),
        n_points=int(w[0].sum()),
        n_boot=int(enough.sum()),
        level=level,
    )


# ------------------------------------------------------------------------------------ a store


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep as stored: its attributes and its record arrays cut to `n_records`."""

    name: str
    attrs: dict[str, Any]
    records: dict[str, np.ndarray]

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def seed(self) -> int:
        return int(self.attrs["seed"])


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep read from its Zarr group: group attributes (with `config`) and its runs by name."""

    path: Path
    attrs: dict[str, Any]
    runs: dict[str, Run]

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.attrs.get("config", {}))

    @property
    def kind(self) -> str:
        """The sweep's kind: "width", "data_size" or "noise"."""
        return str(self.config.get("kind"))

    @property
    def x_name(self) -> str:
        """The run attribute the sweep varies: "width", "n_train" or "noise_fraction"."""
        return _KINDS[self.kind]


def read_store(path: str | Path) -> Sweep:
    """Read a sweep's Zarr v3 group (read-only): every run's attributes and valid records.

    Only the first `n_records` entries of each array are valid (a run still being written, or a
    diverged one, stops early); without that attribute the whole array is taken. A run whose
    metadata cannot be read (a writer killed mid-write) gets status "unreadable" and no records.
    """
    import zarr

    path = Path(path)
    if not path.exists():
        raise bad_value("path", str(path), "an existing Zarr store written by a sweep")
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    kind = dict(attrs.get("config", {})).get("kind")
    if kind not in _KINDS:
        raise bad_value(
            "config['kind'] of the store",
            kind,
            f"one of {sorted(_KINDS)}",
            "Was the store written by `ntkspec sweep`?",
        )
    runs = {}
    # Runs are listed from the directory, not `group.groups()`, which fails on one broken child.
    for name in sorted(meta.parent.name for meta in path.glob("*/zarr.json")):
        try:
            runs[name] = _read_run(zarr.open_group(str(path), path=name, mode="r"), name)
        except (OSError, ValueError) as error:
            runs[name] = Run(name, {"status": "unreadable", "message": str(error)}, {})
    return Sweep(path, attrs, runs)


def _read_run(group, name: str) -> Run:
    attrs = dict(group.attrs)
    records = {}
    for array_name, array in group.arrays():
        data = array[...]
        n = int(attrs.get("n_records", data.shape[0]))
        records[array_name] = np.asarray(data[: min(max(n, 0), data.shape[0])])
    return Run(name, attrs, records)


# ------------------------------------------------------------------------------------ a table


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
        headers = [x_name, "runs", "diverged", "incomplete", *QUANTITIES.values()]
        cells = []
        for row in self.rows:
            line = [f"{row[x_name]:g}", *(str(row[k]) for k in ("runs", "diverged", "incomplete"))]
            line += [_pm(row[q], row[f"{q}_se"]) for q in QUANTITIES]
            cells.append(line)
        return headers, cells

    def to_markdown(self) -> str:
        headers, cells = self.formatted()
        lines = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
        lines += ["| " + " | ".join(line) + " |" for line in cells]
        return "\n".join(lines)

    def to_rich(self, title: str | None = None):
        """A `rich.table.Table` of the formatted cells, for `rich.console.Console().print`."""
        from rich.table import Table as RichTable

        headers, cells = self.formatted()
        table = RichTable(title=title)
        for header in headers:
            table.add_column(header, justify="right", no_wrap=True)
        for line in cells:
            table.add_row(*line)
        return table

    def to_csv(self, path: str | Path) -> Path:
        import csv

        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


# --------------------------------------------------------------------------------- the analysis


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Everything `analyze_store` derives from a sweep.

    `fits` holds power laws by quantity (loss and T0 over all groups; effective rank below its
    breakpoint; trace ratio above its breakpoint; the adaptation rate times `adaptation_sign`, i.e.
    -dT/dlnL where the rate is negative on average). `breakpoints` holds "effective_rank_at_min",
    "trace_ratio" and "transition" (both series with one shared breakpoint: the transition width).
    `not_fitted` says why a fit is missing, keyed "fit <quantity>" or "breakpoint <name>".
    """

    sweep: Sweep
    runs: list[Run]
    summaries: dict[str, RunSummary]
    skipped: list[dict[str, str]]
    table: Table
    fits: dict[str, PowerLaw]
    breakpoints: dict[str, Breakpoint]
    not_fitted: dict[str, str]
    adaptation_sign: float = 1.0

    @property
    def x_name(self) -> str:
        return self.sweep.x_name

    @property
    def transition(self) -> Breakpoint | None:
        return self.breakpoints.get("transition")

    def per_run(self, quantity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, value, seed) over the summarised runs, for one `RunSummary` field."""
        x = np.array([float(r.attrs[self.x_name]) for r in self.runs])
        y = np.array([getattr(self.summaries[r.name], quantity) for r in self.runs], dtype=float)
        return x, y, np.array([r.seed for r in self.runs])

    def __repr__(self) -> str:
        found = self.transition
        return (
            f"Analysis(store={str(self.sweep.path)!r}, kind={self.sweep.kind!r}, "
            f"runs={len(self.runs)}, skipped={len(self.skipped)}, fits={list(self.fits)}, "
            f"transition={found.label(SYMBOLS[self.x_name]) if found else None!r})"
        )

    def __rich__(self):
        """Rich renderable: the table, then the fits, breakpoints and skipped runs as Markdown."""
        from rich.console import Group
        from rich.markdown import Markdown

        title = f"{self.sweep.path.name}: {self.sweep.kind} sweep, {len(self.runs)} runs"
        notes = self.to_markdown().split("\n\n", 1)[1]
        return Group(self.table.to_rich(title=title), Markdown(notes))

    def to_markdown(self) -> str:
        """The table, then the fits, the breakpoints and the skipped runs, as Markdown."""
        symbol = SYMBOLS[self.x_name]
        lines = [self.table.to_markdown(), ""]
        for name, fit in self.fits.items():
            span = f"{fit.x_min:g}-{fit.x_max:g}"
            flipped = (
                " (of -dT/dlnL)" if name == "adaptation_rate_at_min" and self.adaptation_sign < 0 else ""
            )
            lines.append(f"- {name}{flipped}: {fit.label(symbol)}, fitted on {symbol} = {span}")
        for name, found in self.breakpoints.items():
            slopes = ", ".join(
                f"{left:.2f} -> {right:.2f}"
                for left, right in zip(found.slopes_left, found.slopes_right, strict=True)
            )
            lines.append(f"- breakpoint {name}: {found.label(symbol)}, log-log slopes {slopes}")
        lines += [f"- not fitted, {name}: {why}" for name, why in self.not_fitted.items()]
        lines += [
            f"- skipped {s['name']} ({s['status']})" + (f": {s['message']}" if s["message"] else "")
            for s in self.skipped
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (NaN as null)."""
        return _jsonable(
            {
                "store": str(self.sweep.path),
                "config": self.sweep.config,
                "kind": self.sweep.kind,
                "x": self.x_name,
                "table": self.table.rows,
                "runs": [
                    {
                        "name": r.name,
                        self.x_name: r.attrs[self.x_name],
                        "seed": r.seed,
                        **self.summaries[r.name].as_dict(),
                    }
                    for r in self.runs
                ],
                "skipped": self.skipped,
                "fits": {k: dataclasses.asdict(v) for k, v in self.fits.items()},
                "breakpoints": {k: dataclasses.asdict(v) for k, v in self.breakpoints.items()},
                "not_fitted": self.not_fitted,
                "adaptation_sign": self.adaptation_sign,
            }
        )

    def write(self, out_dir: str | Path | None = None) -> list[Path]:
        """Write `<store>.table.csv` and `<store>.analysis.json` beside the store (or `out_dir`)."""
        stem = self.sweep.path.name.removesuffix(".zarr")
        where = Path(out_dir) if out_dir is not None else self.sweep.path.parent
        where.mkdir(parents=True, exist_ok=True)
        csv_path = self.table.to_csv(where / f"{stem}.table.csv")
        json_path = where / f"{stem}.analysis.json"
        json_path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return [csv_path, json_path]


def analyze_store(
    path: str | Path, *, window: int | None = None, n_boot: int = 1000, rng: np.random.Generator | int = 0
) -> Analysis:
    """Read a sweep's store; derive run summaries, the per-group table, power laws, breakpoints.

    Runs whose status is not "complete" (diverged, still running) are skipped and listed; so is a
    complete run whose records cannot be summarised (no finite test loss), with the reason.
    """
    sweep = read_store(path)
    x_name = sweep.x_name
    runs, summaries, skipped = [], {}, []
    for run in sweep.runs.values():
        if run.status != "complete":
            message = str(run.attrs.get("message", ""))
            skipped.append({"name": run.name, "status": run.status, "message": message})
            continue
        try:
            if x_name not in run.attrs or "seed" not in run.attrs:
                raise bad_value(f"attributes of run {run.name}", sorted(run.attrs), f"{x_name!r} and 'seed'")
            summaries[run.name] = run_summary(run.records, window=window)
        except ValueError as error:
            skipped.append({"name": run.name, "status": "unusable", "message": str(error)})
            continue
        runs.append(run)
    x = np.array([float(r.attrs[x_name]) for r in runs])
    values = {
        q: np.array([getattr(summaries[r.name], q) for r in runs], dtype=np.float64) for q in QUANTITIES
    }
    table = _table(sweep, x, values, skipped)
    sign = _sign(values["adaptation_rate_at_min"])
    if sweep.kind not in LOG_KINDS:
        fits, breaks, why = {}, {}, {"all": f"{sweep.kind!r} sweeps get no log-log fits"}
    elif runs:
        seeds = np.array([r.seed for r in runs])
        fitted = {**values, "adaptation_rate_at_min": sign * values["adaptation_rate_at_min"]}
        fits, breaks, why = _fit_all(x, fitted, seeds, _rng(rng), n_boot)
    else:
        fits, breaks, why = {}, {}, {"all": "no complete run to analyse"}
    return Analysis(sweep, runs, summaries, skipped, table, fits, breaks, why, sign)


def _table(
    sweep: Sweep, x: np.ndarray, values: dict[str, np.ndarray], skipped: list[dict[str, str]]
) -> Table:
    """One row per width (or size): runs analysed, diverged, otherwise skipped; mean ± s.e."""
    x_name = sweep.x_name
    stats = {q: ensemble(x, y) for q, y in values.items()}
    lost: dict[float, dict[str, int]] = {}
    for entry in skipped:
        value = sweep.runs[entry["name"]].attrs.get(x_name)
        if value is not None:
            counts = lost.setdefault(float(value), {"diverged": 0, "incomplete": 0})
            counts["diverged" if entry["status"] == "diverged" else "incomplete"] += 1
    rows = []
    for g in sorted({*x.tolist(), *lost}):
        row: dict[str, float | int] = {x_name: int(g) if float(g).is_integer() else g}
        row["runs"] = int(np.sum(x == g))
        row.update(lost.get(g, {"diverged": 0, "incomplete": 0}))
        for q, e in stats.items():
            hit = np.flatnonzero(e.x == g)
            row[q] = float(e.mean[hit[0]]) if hit.size else math.nan
            row[f"{q}_se"] = float(e.stderr[hit[0]]) if hit.size else math.nan
        rows.append(row)
    columns = [x_name, "runs", "diverged", "incomplete"]
    columns += [c for q in QUANTITIES for c in (q, f"{q}_se")]
    return Table(columns, rows)


def _fit_all(
    x: np.ndarray,
    values: dict[str, np.ndarray],
    seeds: np.ndarray,
    rng: np.random.Generator,
    n_boot: int,
) -> tuple[dict[str, PowerLaw], dict[str, Breakpoint], dict[str, str]]:
    """Power laws and breakpoints over the runs; a fit that cannot be made is reported in `why`."""
    fits, breaks, why = {}, {}, {}

    def attempt(label, fit, y, **kwargs):
        try:
            return fit(x, y, seeds, n_boot=n_boot, rng=rng, **kwargs)
        except ValueError as error:
            why[label] = str(error)
            return None

    erank, ratio = values["effective_rank_at_min"], values["trace_ratio"]
    for name, y in (
        ("effective_rank_at_min", erank),
        ("trace_ratio", ratio),
        ("transition", np.stack([erank, ratio], axis=1)),
    ):
        found = attempt(f"breakpoint {name}", fit_breakpoint, y)
        if found is not None:
            breaks[name] = found
    # The effective rank follows its power law below its breakpoint, the trace ratio above its own.
    limits: dict[str, dict[str, float]] = {}
    if "effective_rank_at_min" in breaks:
        limits["effective_rank_at_min"] = {"x_max": breaks["effective_rank_at_min"].x}
    if "trace_ratio" in breaks:
        limits["trace_ratio"] = {"x_min": breaks["trace_ratio"].x}
    for name in FITTED:
        found = attempt(f"fit {name}", fit_power_law, values[name], **limits.get(name, {}))
        if found is not None:
            fits[name] = found
    return fits, breaks, why


def _sign(values: np.ndarray) -> float:
    """-1 if the finite values have a negative mean, else +1."""
    finite = values[np.isfinite(values)]
    return -1.0 if finite.size and finite.mean() < 0 else 1.0


def _pm(mean: float, stderr: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3g}" if not np.isfinite(stderr) else f"{mean:.3g} ± {stderr:.2g}"


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


# ------------------------------------------------------------------------------------ helpers


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 or either is non-finite (no warnings)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ok = np.isfinite(num) & np.isfinite(den) & (den != 0)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=ok)


def _pair(x_name: str, x: ArrayLike, y_name: str, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.shape[:1] != xa.shape:
        raise bad_value(
            f"{x_name}, {y_name}", f"shapes {xa.shape} and {ya.shape}", "one entry per run in each"
        )
    return xa, ya


def _check_level(n_boot: int, level: float) -> None:
    if not (isinstance(n_boot, int | np.integer) and n_boot >= 2):
        raise bad_value("n_boot", n_boot, "an integer >= 2")
    if not 0 < level < 1:
        raise bad_value("level", level, "a confidence level in (0, 1), e.g. 0.95")


def _rng(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _seed_matrix(
    x: ArrayLike,
    y: ArrayLike,
    seeds: ArrayLike,
    x_min: float | None = None,
    x_max: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-run values on a (series, groups, seeds) grid; NaN where a run is missing or infinite."""
    xa, ya = _pair("x", x, "y", y)
    labels = np.asarray(seeds)
    if labels.shape != xa.shape:
        raise bad_value("seeds", f"shape {labels.shape}", f"one seed label per run, shape {xa.shape}")
    if not np.all(np.isfinite(xa) & (xa > 0)):
        raise bad_value("x", f"values {xa[~(np.isfinite(xa) & (xa > 0))]}", "positive widths or sizes")
    columns = ya[:, None] if ya.ndim == 1 else ya
    if columns.ndim != 2:
        raise bad_value("y", f"an array of shape {ya.shape}", "shape (runs,) or (runs, series)")
    keep = (xa >= (x_min if x_min is not None else -np.inf)) & (
        xa <= (x_max if x_max is not None else np.inf)
    )
    groups, group_of = np.unique(xa[keep], return_inverse=True)
    names, seed_of = np.unique(labels[keep], return_inverse=True)
    pairs = group_of * names.size + seed_of
    if np.unique(pairs).size != pairs.size:
        raise bad_value("x, seeds", "a (group, seed) pair more than once", "one run per width and seed")
    values = np.full((columns.shape[1], groups.size, names.size), np.nan)
    values[:, group_of, seed_of] = columns[keep].T
    return groups, values


def _paired_resample(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Resample the seed axis (last) with replacement, the same draw for every group and series.

    (..., groups, seeds) -> (n_boot, ..., groups, seeds).
    """
    draws = rng.integers(0, values.shape[-1], size=(n_boot, values.shape[-1]))
    return np.moveaxis(values[..., draws], -2, 0)


def _log_means(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log of the mean over the last axis (finite entries only), and a 0/1 weight where defined."""
    finite = np.isfinite(values)
    mean = _safe_divide(np.where(finite, values, 0.0).sum(axis=-1), finite.sum(axis=-1))
    defined = np.isfinite(mean) & (mean > 0)
    return np.log(np.where(defined, mean, 1.0)), defined.astype(np.float64)


def _line(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares line v = a + b u per row of v, w (rows × points); NaN if singular."""
    sw, su, sv = w.sum(-1), (w * u).sum(-1), (w * v).sum(-1)
    suu, suv = (w * u * u).sum(-1), (w * u * v).sum(-1)
    slope = _safe_divide(sw * suv - su * sv, sw * suu - su * su)
    return slope, _safe_divide(sv - slope * su, sw)


def _hinge(
    u: np.ndarray, v: np.ndarray, w: np.ndarray, candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous two-segment fits for every replicate, series and candidate breakpoint.

    v, w: (replicates, series, points). Returns the SSE summed over series (replicates, candidates)
    and the coefficients (replicates, candidates, series, 3): value at the breakpoint, left and
    right slope. Rank-deficient systems (a segment without points) get the minimum-norm solution.
    """
    sse = np.empty((v.shape[0], candidates.size))
    coef = np.empty((v.shape[0], candidates.size, v.shape[1], 3))
    for k, c in enumerate(candidates):
        d = u - c
        design = np.stack([np.ones_like(u), np.minimum(d, 0.0), np.maximum(d, 0.0)], axis=-1)
        gram = np.einsum("rsn,ni,nj->rsij", w, design, design)
        rhs = np.einsum("rsn,ni,rsn->rsi", w, design, v)
        beta = np.einsum("rsij,rsj->rsi", np.linalg.pinv(gram, hermitian=True), rhs)
        resid = v - np.einsum("ni,rsi->rsn", design, beta)
        sse[:, k] = np.sum(w * resid**2, axis=(1, 2))
        coef[:, k] = beta
    return sse, coef


def _parabolic_minimum(grid: np.ndarray, values: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """Vertex of the parabola through each row's grid minimum and its neighbours (uniform grid).

    Refines a grid search below the grid spacing; the vertex is kept within one spacing of the grid
    point, and an edge minimum or a non-convex triple keeps the grid point.
    """
    step = grid[1] - grid[0]
    inner = np.clip(pick, 1, grid.size - 2)
    rows = np.arange(pick.size)
    left, mid, right = (values[rows, inner + d] for d in (-1, 0, 1))
    curvature = left - 2 * mid + right
    shift = np.clip(_safe_divide(0.5 * (left - right), curvature), -1.0, 1.0)
    usable = (pick == inner) & (curvature > 0) & np.isfinite(shift)
    return grid[pick] + np.where(usable, shift, 0.0) * step


def _expanded_level(level: float, n_seeds: int) -> float:
    """Percentile level of Hesterberg's expanded percentile interval for `n_seeds` resampled units.

    The plain percentile bootstrap is too narrow for few units (its spread is that of a sample of n
    with divisor n, and normal rather than Student tails). The expanded interval takes the
    percentiles at 2 Phi(sqrt(n / (n - 1)) t_{n-1}((1 + level) / 2)) - 1 instead (Hesterberg, "What
    teachers should know about the bootstrap", Am. Stat. 2015). For 10 seeds and level 0.95: 0.983.
    """
    from scipy import stats

    if n_seeds < 2:
        return level
    t = stats.t.ppf(0.5 * (1 + level), n_seeds - 1) * math.sqrt(n_seeds / (n_seeds - 1))
    return float(2 * stats.norm.cdf(t) - 1)


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    if samples.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
