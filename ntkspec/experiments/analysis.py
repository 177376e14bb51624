"""The analysis of a sweep: per-run summaries, per-value tables, power laws and the transition width.

`analyze_store(path)` reads the sweep through `store.open_sweep` (the one reader), summarises every
complete run (`summaries.run_summary`), averages them per swept value, fits power laws and breakpoints
(`fits`), and derives the seed-mean curves the dynamics figure draws, so that figures and reports
(`plots`, `report`) only draw and render what is computed here. Runs that are not complete (diverged,
still running, failed, unreadable) are skipped and named, with how many runs were found of how many
the config asks for.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import xarray as xr

from ntkspec.experiments import report
from ntkspec.experiments.against_kernels import LABELS
from ntkspec.experiments.config import point_of
from ntkspec.experiments.fits import (
    Breakpoint,
    Ensemble,
    PowerLaw,
    check_bootstrap,
    ensemble,
    exponent_difference,
    fit_breakpoint,
    fit_offset_power_law,
    fit_power_law,
    nanmean,
    paired_exponent_difference,
)
from ntkspec.experiments.records import KINDS, Kind
from ntkspec.experiments.store import open_sweep, read_calibration
from ntkspec.experiments.summaries import FITTED, QUANTITIES, RunSummary, adaptation_rate, run_summary


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its attributes, its record arrays cut to `n_records`, its trajectory and
    its kernel regressions (`kernels`: "kernel" names and each `kernel_<field>` as `<field>`)."""

    name: str
    attrs: dict[str, Any]
    records: dict[str, np.ndarray]
    trajectory: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    kernels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def at_min(self) -> dict[str, float] | None:
        """The record measured at the exact epoch of the minimum test loss (None for older runs)."""
        values = {k.removesuffix("_at_min"): v for k, v in self.attrs.items() if k.endswith("_at_min")}
        return values or None

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def seed(self) -> int:
        return int(self.attrs["seed"])


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep as `open_sweep` reads it, seen run by run: `runs` by name, in the dataset's order."""

    dataset: xr.Dataset
    runs: dict[str, Run]

    @property
    def path(self) -> Path:
        return Path(self.dataset.attrs["path"])

    @property
    def attrs(self) -> dict[str, Any]:
        return self.dataset.attrs

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.attrs.get("config", {}))

    @property
    def kind(self) -> str:
        """The sweep's kind: "width", "data_size" or "noise"."""
        return str(self.attrs["kind"])

    @property
    def swept(self) -> Kind:
        return KINDS[self.kind]

    @property
    def x_name(self) -> str:
        """The run attribute the sweep varies: "width", "n_train" or "noise_fraction"."""
        return self.swept.attribute


def read_store(path: str | Path) -> Sweep:
    """The sweep at `path` (folder or `.zarr.zip`), run by run; unreadable runs have status "unreadable"."""
    dataset = open_sweep(path)
    swept = KINDS[dataset.attrs["kind"]]
    per_run = [v for v in dataset.data_vars if dataset[v].dims == (swept.dim, "seed")]
    per_record = [v for v in (*dataset.data_vars, "epoch") if "record" in dataset[v].dims]
    per_step = [v for v in (*dataset.data_vars, *dataset.coords) if "step" in dataset[v].dims]
    per_kernel = [v for v in dataset.data_vars if dataset[v].dims == (swept.dim, "seed", "kernel")]
    runs: dict[str, Run] = {}
    for i, value in enumerate(dataset[swept.dim].values):
        for j, seed in enumerate(dataset["seed"].values):
            cell = dataset.isel({swept.dim: i, "seed": j})
            status = str(cell["status"].values)
            if status == "missing":
                continue
            name = str(cell["name"].values)
            attrs = {v: cell[v].values.item() for v in per_run}
            attrs.update({swept.attribute: value.item(), "seed": int(seed)})
            n = int(attrs["n_records"])
            records = {v: np.asarray(cell[v].values[:n]) for v in per_record}
            steps = np.isfinite(cell["trajectory_epoch"].values) if per_step else []
            trajectory = {v.removeprefix("trajectory_"): np.asarray(cell[v].values[steps]) for v in per_step}
            kernels = {v.removeprefix("kernel_"): np.asarray(cell[v].values) for v in per_kernel}
            if per_kernel:
                kernels["kernel"] = np.asarray(dataset["kernel"].values)
            runs[name] = Run(name, attrs, records, trajectory, kernels)
    for name, message in dataset.attrs["unreadable"].items():
        runs[name] = Run(name, {"status": "unreadable", "message": message}, {})
    return Sweep(dataset, runs)


@dataclasses.dataclass(frozen=True)
class KernelScaling:
    """Data scaling of the network's test error against its kernels' (from `kernel_scaling`).

    models : "network", then the config's kernels; `labels` their display names.
    error, mse : per model, seed means and standard errors per data size (MSE: kernels only; the
        network trains on cross-entropy). The network's test error is at its minimum test loss.
    error_fits, mse_fits : per model, the power law of test error (MSE) against n, seed bootstrap.
    differences : per kernel, exponent(network) − exponent(kernel) of test error with its paired
        seed-bootstrap interval, over the sizes both have (`fits.paired_exponent_difference`):
        negative where the network's error falls faster with n than the kernel's.
    not_fitted : why a fit is missing, keyed "error <model>", "mse <model>", "difference <kernel>".
    n_seeds : the seeds (bootstrap units) the intervals come from.
    """

    models: tuple[str, ...]
    labels: dict[str, str]
    error: dict[str, Ensemble]
    mse: dict[str, Ensemble]
    error_fits: dict[str, PowerLaw]
    mse_fits: dict[str, PowerLaw]
    differences: dict[str, tuple[float, float, float]]
    not_fitted: dict[str, str]
    n_seeds: int


def kernel_scaling(runs: list[Run], x_name: str, config: dict, *, n_boot: int = 1000, rng=0) -> KernelScaling:
    """Exponents of test error (and MSE) against n for the network and each kernel of the runs
    (`against_kernels`), with seed-bootstrap intervals; `config` is the store's."""
    kernels = tuple(config.get("kernels", ()))
    models = ("network", *kernels)
    labels = {m: LABELS[m] for m in models}
    if "pretrained" in kernels:
        labels["pretrained"] = f"{LABELS['pretrained']} (k = {config['pretrained_samples']})"
    x = np.array([float(r.attrs[x_name]) for r in runs])
    seeds = np.array([r.seed for r in runs])
    error = {"network": np.array([1.0 - float(r.attrs.get("test_accuracy_at_min", np.nan)) for r in runs])}
    mse = {}
    for name in kernels:
        for out, field in ((error, "test_error"), (mse, "test_mse")):
            out[name] = np.array([_kernel_value(r, name, field) for r in runs])
    generator = np.random.default_rng(rng)
    fits: dict[str, dict[str, PowerLaw]] = {"error": {}, "mse": {}}
    differences, why = {}, {}
    for what, values in (("error", error), ("mse", mse)):
        for name, y in values.items():
            try:
                fits[what][name] = fit_power_law(x, y, seeds, n_boot=n_boot, rng=generator)
            except ValueError as problem:
                why[f"{what} {name}"] = str(problem)
    for name in kernels:
        try:
            differences[name] = paired_exponent_difference(
                x, error["network"], error[name], seeds, n_boot=n_boot, rng=generator
            )
        except ValueError as problem:
            why[f"difference {name}"] = str(problem)
    return KernelScaling(
        models,
        labels,
        {m: ensemble(x, y) for m, y in error.items()},
        {m: ensemble(x, y) for m, y in mse.items()},
        fits["error"],
        fits["mse"],
        differences,
        why,
        int(np.unique(seeds).size),
    )


def _kernel_value(run, name: str, field: str) -> float:
    names = list(run.kernels.get("kernel", []))
    return float(run.kernels[field][names.index(name)]) if name in names else np.nan


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The learning rate of one swept value of a calibrated sweep (`lr = "calibrate"`), and where
    the minimum test loss of its complete runs fell against the study's window (App. D.1: "a
    minimum test loss is reached between 400 and 1000 epochs").

    `status` is the stored calibration's ("calibrated", "uncalibrated"), or "missing" when none is
    stored yet; `pilots` are its (lr, epoch of the minimum) by lr; `min_epochs` the runs'
    `min_test_loss_epoch`, by seed, `min_losses` their `min_test_loss`, and `at_cap` how many of
    them trained to the config's `epochs`, the cap (patience may have stopped one there too).
    """

    value: float
    status: str
    lr: float | None
    pilots: list[tuple[float, int]]
    min_epochs: np.ndarray
    window: tuple[int, int]
    min_losses: np.ndarray
    at_cap: int

    @property
    def median_epoch(self) -> float:
        return float(np.median(self.min_epochs)) if self.min_epochs.size else math.nan

    @property
    def inside(self) -> bool:
        """Whether the median over seeds of the epoch of the minimum is inside the window."""
        return bool(self.window[0] <= self.median_epoch <= self.window[1])

    @property
    def epoch_loss_correlation(self) -> float:
        """Pearson's r over seeds between the epoch of the minimum and the minimum test loss (NaN
        below three runs or for a constant column). Negative r: the seeds that reach their minimum
        later reach a lower one, so an epoch cap that stops runs early biases the mean loss upwards."""
        if self.min_epochs.size < 3 or np.ptp(self.min_epochs) == 0 or np.ptp(self.min_losses) == 0:
            return math.nan
        return float(scipy.stats.pearsonr(self.min_epochs, self.min_losses).statistic)


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Everything `analyze_store` derives from a sweep.

    `fits` holds power laws by quantity (loss and T0 over all groups; the effective ranks below their
    breakpoints; trace ratio above its breakpoint; the adaptation rate times `adaptation_sign`, i.e.
    -dT/dlnL where the rate is negative on average), and "min_test_loss_above_floor", L − L∞ with
    the floor L∞ fitted over the range where the loss falls. `breakpoints` holds
    "cosine_effective_rank_at_min", "effective_rank_at_min", "trace_ratio" and "transition" (the
    cosine effective rank, the study's primary one, and the trace ratio with one shared breakpoint:
    the transition width).
    `not_fitted` says why a fit is missing, keyed "fit <quantity>" or "breakpoint <name>".
    `rates` holds each summarised run's adaptation rate per record; `dynamics` the seed-mean curves
    per swept value (epoch, trace, effective rank, ln train loss, rate, and how the kernel moves:
    kernel velocity, 1 − A(K₀, K), kernel-regression test error) at the epochs all its runs
    recorded. `expected_runs` is what the config asks for (None if it cannot say). `kernels`: the
    network's data scaling against its kernels' (`against_kernels.kernel_scaling`), for a sweep whose
    config names `kernels` (else None). `calibration`: per swept value, its calibrated learning
    rate and the median epoch of the minimum against the window (empty unless `lr = "calibrate"`).
    """

    sweep: Sweep
    runs: list[Run]
    summaries: dict[str, RunSummary]
    skipped: list[dict[str, str]]
    table: report.Table
    fits: dict[str, PowerLaw]
    breakpoints: dict[str, Breakpoint]
    not_fitted: dict[str, str]
    adaptation_sign: float = 1.0
    rates: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    dynamics: dict[float, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    expected_runs: int | None = None
    kernels: KernelScaling | None = None
    calibration: tuple[Calibration, ...] = ()

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
            f"transition={found.label(self.sweep.swept.symbol) if found else None!r})"
        )

    def __rich__(self):
        return report.rich(self)

    def to_markdown(self) -> str:
        return report.markdown(self)

    def to_dict(self) -> dict[str, Any]:
        return report.as_dict(self)

    def write(self, out_dir: str | Path | None = None) -> list[Path]:
        return report.write(self, out_dir)


def analyze_store(
    path: str | Path, *, window: int | None = None, n_boot: int = 1000, rng: np.random.Generator | int = 0
) -> Analysis:
    """Read a sweep's store; derive run summaries, the per-group table, power laws, breakpoints.

    Runs whose status is not "complete" (diverged, still running, unreadable) are skipped and listed;
    so is a complete run whose records cannot be summarised (no finite test loss), with the reason.
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
            summaries[run.name] = run_summary(
                run.records, window=window, at_min=run.at_min, trajectory=run.trajectory or None
            )
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
    if not sweep.swept.log:
        fits, breaks, why = {}, {}, {"all": f"{sweep.kind!r} sweeps get no log-log fits"}
    elif runs:
        seeds = np.array([r.seed for r in runs])
        fitted = {**values, "adaptation_rate_at_min": sign * values["adaptation_rate_at_min"]}
        fits, breaks, why = _fit_all(x, fitted, seeds, np.random.default_rng(rng), n_boot)
    else:
        fits, breaks, why = {}, {}, {"all": "no complete run to analyse"}
    rates = {r.name: adaptation_rate(r.records["trace"], r.records["train_loss"], window) for r in runs}
    kernels = None
    if sweep.config.get("kernels") and runs:
        kernels = kernel_scaling(runs, x_name, sweep.config, n_boot=n_boot, rng=np.random.default_rng(rng))
    return Analysis(
        sweep,
        runs,
        summaries,
        skipped,
        table,
        fits,
        breaks,
        why,
        sign,
        rates,
        _dynamics(runs, x_name, rates, summaries),
        sweep.attrs.get("expected_runs"),
        kernels,
        _calibration(sweep, runs),
    )


def _calibration(sweep: Sweep, runs: list[Run]) -> tuple[Calibration, ...]:
    """Each swept value's stored calibration, with the epochs of the minimum of its complete runs."""
    config = sweep.config
    if config.get("lr") != "calibrate":
        return ()
    window = tuple(int(e) for e in config["min_epoch_window"])
    points = {
        point_of(r.name): float(r.attrs[sweep.x_name]) for r in sweep.runs.values() if sweep.x_name in r.attrs
    }
    out = []
    for point, value in sorted(points.items(), key=lambda item: item[1]):
        stored = read_calibration(sweep.path, point) or {"status": "missing", "lr": None, "pilots": []}
        found = [
            r.attrs
            for r in runs
            if point_of(r.name) == point and np.isfinite(float(r.attrs.get("min_test_loss_epoch", math.nan)))
        ]
        epochs = np.array([float(a["min_test_loss_epoch"]) for a in found])
        losses = np.array([float(a.get("min_test_loss", math.nan)) for a in found])
        at_cap = sum(int(a.get("stopped_epoch", -1)) >= int(config["epochs"]) for a in found)
        pilots = [(float(lr), int(epoch)) for lr, epoch in stored["pilots"]]
        out.append(Calibration(value, stored["status"], stored["lr"], pilots, epochs, window, losses, at_cap))
    return tuple(out)


def _dynamics(
    runs: list[Run], x_name: str, rates: dict[str, np.ndarray], summaries: dict[str, RunSummary]
) -> dict[float, dict[str, np.ndarray]]:
    """Seed means per swept value, at the epochs all its runs recorded: trace, effective rank,
    ln train loss (non-positive losses left out), the adaptation rate, the kernel velocity, the
    kernel's movement 1 − A(K₀, K), the kernel-regression test error, the label alignment
    A(K, yyᵀ) and the eigenvector rotation since the previous record (NaN where not recorded)."""
    groups: dict[float, list[Run]] = {}
    for run in sorted(runs, key=lambda r: float(r.attrs[x_name])):
        groups.setdefault(float(run.attrs[x_name]), []).append(run)
    out = {}
    for value, members in groups.items():
        epochs = members[0].records["epoch"]
        for run in members[1:]:
            epochs = np.intersect1d(epochs, run.records["epoch"])
        columns: dict[str, list[np.ndarray]] = {
            "trace": [],
            "effective_rank": [],
            "log_train_loss": [],
            "rate": [],
            "kernel_velocity": [],
            "kernel_motion": [],
            "regression_error": [],
            "label_alignment": [],
            "eigenvector_rotation": [],
        }
        for run in members:
            rec = run.records
            at = np.searchsorted(rec["epoch"], epochs)
            loss = rec["train_loss"]
            positive = np.isfinite(loss) & (loss > 0)
            columns["trace"].append(rec["trace"][at])
            columns["effective_rank"].append(rec["effective_rank"][at])
            columns["log_train_loss"].append(
                np.where(positive, np.log(np.where(positive, loss, 1)), np.nan)[at]
            )
            columns["rate"].append(rates[run.name][at])
            missing = np.full(rec["epoch"].shape, np.nan)
            columns["kernel_velocity"].append(rec.get("kernel_velocity", missing)[at])
            columns["kernel_motion"].append(1.0 - rec.get("init_alignment", missing)[at])
            for key in ("regression_error", "label_alignment", "eigenvector_rotation"):
                columns[key].append(rec.get(key, missing)[at])
        mean = {key: nanmean(np.stack(column), axis=0) for key, column in columns.items()}
        mean["epoch"] = np.asarray(epochs, dtype=np.float64)
        mean["min_epoch"] = np.array(np.mean([summaries[run.name].min_epoch for run in members]))
        out[value] = mean
    return out


def _table(
    sweep: Sweep, x: np.ndarray, values: dict[str, np.ndarray], skipped: list[dict[str, str]]
) -> report.Table:
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
    return report.Table(columns, rows)


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
        if not np.any(np.isfinite(y)):
            why[label] = "no finite value (a store recorded before this quantity was)"
            return None
        try:
            return fit(x, y, seeds, n_boot=n_boot, rng=rng, **kwargs)
        except ValueError as error:
            why[label] = str(error)
            return None

    erank, ratio = values["cosine_effective_rank_at_min"], values["trace_ratio"]
    for name, y in (
        ("cosine_effective_rank_at_min", erank),
        ("effective_rank_at_min", values["effective_rank_at_min"]),
        ("trace_ratio", ratio),
        ("transition", np.stack([erank, ratio], axis=1)),
    ):
        found = attempt(f"breakpoint {name}", fit_breakpoint, y)
        if found is not None:
            breaks[name] = found
    # An effective rank follows its power law below its breakpoint, the trace ratio above its own.
    limits: dict[str, dict[str, float]] = {}
    for name in ("cosine_effective_rank_at_min", "effective_rank_at_min"):
        if name in breaks:
            limits[name] = {"x_max": breaks[name].x}
    if "trace_ratio" in breaks:
        limits["trace_ratio"] = {"x_min": breaks["trace_ratio"].x}
    for name in FITTED:
        found = attempt(f"fit {name}", fit_power_law, values[name], **limits.get(name, {}))
        if found is not None:
            fits[name] = found
    # The loss falls towards a floor: L − L∞ with L∞ fitted, over the widths where L falls.
    found = attempt("fit min_test_loss above its floor", fit_offset_power_law, values["min_test_loss"])
    if found is not None:
        fits["min_test_loss_above_floor"] = found
    return fits, breaks, why


def _sign(values: np.ndarray) -> float:
    """-1 if the finite values have a negative mean, else +1."""
    finite = values[np.isfinite(values)]
    return -1.0 if finite.size and finite.mean() < 0 else 1.0


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A quantity's power law in two sweeps (`a`, `b`) and the difference of their exponents,
    exponent(a) − exponent(b), with its interval (`fits.exponent_difference`: the seeds of two sweeps
    are independent). Each fit spans its own range unless `shared_range`: then both span the groups
    the two sweeps' own ranges share."""

    quantity: str
    a: PowerLaw
    b: PowerLaw
    difference: tuple[float, float, float]
    shared_range: bool = False


def compare(
    a: Analysis, b: Analysis, level: float = 0.95, n_boot: int = 1000, rng: int = 0
) -> list[Comparison]:
    """The exponents of the quantities fitted in both sweeps, compared (e.g. the trace ratio's at two
    depths, each past its own transition: the reference study finds them equal).

    Where the two fits span different ranges (two breakpoints, say), a second row refits both over
    the overlap of the ranges (seed bootstrap with `n_boot` replicates from `rng`), so that a
    difference of range is not read as one of exponent. No such row where the overlap holds fewer
    groups than a fit needs, nor for the loss above its fitted floor.
    """
    check_bootstrap(n_boot, level)
    rows = []
    for name, fit_a in a.fits.items():
        if name not in b.fits:
            continue
        fit_b = b.fits[name]
        rows.append(Comparison(name, fit_a, fit_b, exponent_difference(fit_a, fit_b, level)))
        if name not in FITTED or (fit_a.x_min, fit_a.x_max) == (fit_b.x_min, fit_b.x_max):
            continue
        span = {"x_min": max(fit_a.x_min, fit_b.x_min), "x_max": min(fit_a.x_max, fit_b.x_max)}
        try:
            shared = [_refit(analysis, name, level, n_boot, rng, **span) for analysis in (a, b)]
        except ValueError:  # the overlap holds fewer than two groups
            continue
        rows.append(Comparison(name, *shared, exponent_difference(*shared, level), shared_range=True))
    return rows


def _refit(
    analysis: Analysis, name: str, level: float, n_boot: int, rng: int, x_min: float, x_max: float
) -> PowerLaw:
    """`name`'s power law over the groups in [x_min, x_max], from the analysis's runs (the
    adaptation rate signed as in `Analysis.fits`)."""
    x, y, seeds = analysis.per_run(name)
    y = y * (analysis.adaptation_sign if name == "adaptation_rate_at_min" else 1.0)
    return fit_power_law(x, y, seeds, n_boot=n_boot, level=level, rng=rng, x_min=x_min, x_max=x_max)
