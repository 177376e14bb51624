"""Figures of a sweep (width, data size or noise): dynamics, scaling laws, transition.

Every figure is a `matplotlib.figure.Figure` built directly (no pyplot, so no global figure state);
the style `STYLE` is applied with `matplotlib.rc_context` only while a figure is built and saved.
Sizes are for a two-column paper page (7 in wide), all text at 8 pt or more.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib as mpl
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ntkspec._errors import bad_value
from ntkspec.experiments.analysis import Analysis, analyze_store
from ntkspec.experiments.fits import Breakpoint, PowerLaw
from ntkspec.experiments.store import stem

STYLE = {
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,
}
WIDTH_IN = 7.0


def _styled(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under `STYLE` (fonts and line widths are fixed when artists are made)."""

    @functools.wraps(build)
    def wrapper(*args, **kwargs) -> Figure:
        with mpl.rc_context(STYLE):
            return build(*args, **kwargs)

    return wrapper


def plot_store(
    path: str | Path,
    out_dir: str | Path,
    *,
    analysis: Analysis | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 150,
) -> list[Path]:
    """Analyse the sweep at `path` (unless `analysis` is given) and write its figures to `out_dir`.

    Writes `<store>-dynamics`, `<store>-scaling`, `<store>-transition`, `<store>-kernel-motion`,
    `<store>-infinite` and `<store>-alignment` (and `<store>-kernels` for a sweep with kernel
    regressions) in each of
    `formats`, less those `missing_figures` names (a store recorded before their quantities were);
    returns the paths written.
    """
    check_formats(formats)
    analysis = analysis if analysis is not None else analyze_store(path)
    if not analysis.runs:
        raise bad_value(
            "path",
            str(path),
            "a store with at least one complete run",
            f"Skipped runs: {[s['name'] + ' (' + s['status'] + ')' for s in analysis.skipped]}.",
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = stem(analysis.sweep.path)
    written = []
    missing = missing_figures(analysis)
    with mpl.rc_context(STYLE):
        figures = [
            ("dynamics", dynamics_figure),
            ("scaling", scaling_figure),
            ("transition", transition_figure),
            ("kernel-motion", kernel_motion_figure),
            ("infinite", infinite_figure),
            ("alignment", alignment_figure),
        ]
        if analysis.kernels is not None:
            figures.append(("kernels", kernels_figure))
        for kind, build in figures:
            if kind in missing:
                continue
            figure = build(analysis)
            for fmt in formats:
                target = out / f"{name}-{kind}.{fmt}"
                figure.savefig(target, dpi=dpi, format=fmt)
                written.append(target)
    return written


def check_formats(formats: Sequence[str]) -> None:
    """Raise a `ValueError` naming `formats` unless it is a non-empty list of formats matplotlib writes."""
    supported = Figure().canvas.get_supported_filetypes()
    if not formats or any(fmt not in supported for fmt in formats):
        raise bad_value("formats", list(formats), f"figure formats matplotlib writes: {', '.join(supported)}")


# ---------------------------------------------------------------------------------- dynamics


@_styled
def dynamics_figure(analysis: Analysis) -> Figure:
    """Seed-mean trace, adaptation rate and effective rank vs epoch (top) and train loss (bottom).

    One line per width (or data size), coloured on a sequential scale; a dot marks the mean epoch of
    minimum test loss. The curves are the analysis's (`Analysis.dynamics`).
    """
    figure = Figure(figsize=(WIDTH_IN, 4.4), layout="constrained")
    axes = figure.subplots(2, 3, sharex="row")
    groups = analysis.dynamics
    palette = _palette(len(groups))
    colors = {value: palette(i) for i, value in enumerate(groups)}
    sign = analysis.adaptation_sign
    rate_label = ("−" if sign < 0 else "") + "dT / d ln L"
    quantities = (
        ("trace", "NTK trace T"),
        ("rate", rate_label),
        ("effective_rank", "effective rank"),
    )
    for value, curves in groups.items():
        mean = {**curves, "rate": sign * curves["rate"]}
        i_min = int(np.argmin(np.abs(mean["epoch"] - curves["min_epoch"])))
        loss = np.exp(mean["log_train_loss"])
        dot = {"color": colors[value], "mec": "k", "mew": 0.5, "ms": 3.5, "zorder": 3}
        for col, (key, _) in enumerate(quantities):
            for row, x in enumerate((mean["epoch"], loss)):
                axes[row, col].plot(x, mean[key], color=colors[value])
                axes[row, col].plot(x[i_min], mean[key][i_min], "o", **dot)
    for col, (_, label) in enumerate(quantities):
        for row in range(2):
            axes[row, col].set_yscale("log")
            axes[row, col].set_ylabel(label)
        axes[0, col].set_xscale("symlog", linthresh=_first_positive(analysis), linscale=0.3)
        axes[0, col].set_xlabel("epoch")
        axes[1, col].set_xscale("log")
        axes[1, col].set_xlabel("train loss (→ training)")
        axes[0, col].set_xlim(left=0.0)
    axes[1, 0].invert_xaxis()  # shared within the row: time runs left to right
    marker = Line2D([], [], ls="", marker="o", color="0.6", mec="k", mew=0.5, ms=3.5)
    axes[0, 0].legend([marker], ["minimum test loss"], loc="upper left")
    _tidy(axes.ravel())
    _colorbar(figure, axes, analysis, list(groups))
    return figure


# ----------------------------------------------------------------------------------- scaling


@_styled
def scaling_figure(analysis: Analysis) -> Figure:
    """Min test loss, T0, adaptation rate and effective rank at the minimum vs width (or data size).

    Seed means with standard-error bars, single seeds as faint dots, fitted power laws dashed with
    their exponent and bootstrap interval in the legend.
    """
    figure = Figure(figsize=(WIDTH_IN, 4.8), layout="constrained")
    axes = figure.subplots(2, 2, sharex=True).ravel()
    sign = analysis.adaptation_sign
    panels = (
        ("min_test_loss", "minimum test loss", 1.0),
        ("trace0", "T₀ (NTK trace at init)", 1.0),
        ("adaptation_rate_at_min", ("−" if sign < 0 else "") + "dT / d ln L at minimum", sign),
        ("cosine_effective_rank_at_min", "cosine-NTK effective rank at minimum", 1.0),
    )
    symbol = analysis.sweep.swept.symbol
    for ax, (key, label, factor) in zip(axes, panels, strict=True):
        _points(ax, analysis, key, factor, "C0", "mean ± s.e.")
        _power_law(ax, analysis.fits.get(key), symbol)
        ax.set_ylabel(label)
    _points(axes[3], analysis, "effective_rank_at_min", 1.0, "C1", "raw NTK", marker="s")
    _power_law(axes[0], analysis.fits.get("min_test_loss_above_floor"), symbol, style=":")
    for ax in axes:
        ax.set_xscale(_x_scale(analysis))
        ax.set_yscale("log")
        ax.legend(loc="best")
    for ax in axes[2:]:
        ax.set_xlabel(analysis.sweep.swept.label)
    _tidy(axes)
    return figure


# -------------------------------------------------------------------------------- transition


@_styled
def transition_figure(analysis: Analysis) -> Figure:
    """Trace ratio and effective rank vs width, with the fitted breakpoint and its bootstrap CI.

    The shared breakpoint of both series (`analysis.transition`) is drawn where it was fitted, else
    each panel's own breakpoint.
    """
    figure = Figure(figsize=(WIDTH_IN, 2.7), layout="constrained")
    axes = figure.subplots(1, 2, sharex=True)
    symbol = analysis.sweep.swept.symbol
    panels = (
        ("trace_ratio", r"trace ratio $(T_{\min} - T_0) / T_0$", 1, "trace_ratio"),
        (
            "cosine_effective_rank_at_min",
            "cosine-NTK eff. rank at minimum",
            0,
            "cosine_effective_rank_at_min",
        ),
    )
    joint = analysis.transition
    for ax, (key, label, series, own) in zip(axes, panels, strict=True):
        _points(ax, analysis, key, 1.0, "C0", "mean ± s.e.")
        fit, index = (joint, series) if joint is not None else (analysis.breakpoints.get(own), 0)
        if fit is not None:
            _breakpoint(ax, fit, index, analysis, symbol)
        ax.set_xscale(_x_scale(analysis))
        ax.set_yscale("log")
        ax.set_xlabel(analysis.sweep.swept.label)
        ax.set_ylabel(label)
        ax.legend(loc="best")
    _tidy(axes)
    return figure


# ----------------------------------------------------------------------------------- kernels


@_styled
def kernels_figure(analysis: Analysis) -> Figure:
    """Test error (a) and test MSE (b) against n, log-log: the network and each of its kernels.

    Seed means with standard-error bars, the fitted power law of each model as a line of its colour,
    its exponent and bootstrap interval in the legend (`Analysis.kernels`). The network's test error
    is at its minimum test loss; it has no MSE (trained on cross-entropy).
    """
    scaling = analysis.kernels
    figure = Figure(figsize=(WIDTH_IN, 4.4), layout="constrained")
    axes = figure.subplots(1, 2, sharex=True)
    symbol = analysis.sweep.swept.symbol
    markers = dict(zip(scaling.models, "osD^vP", strict=False))
    for ax, means, fits, label in (
        (axes[0], scaling.error, scaling.error_fits, "test error"),
        (axes[1], scaling.mse, scaling.mse_fits, "test MSE (one-hot − 1/C targets)"),
    ):
        for i, model in enumerate(scaling.models):
            if model not in means:
                continue
            stats, fit, color = means[model], fits.get(model), "k" if i == 0 else f"C{i - 1}"
            keep = np.isfinite(stats.mean) & (stats.mean > 0)
            name = scaling.labels[model]
            law = f": {fit.exponent:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]" if fit else ""
            ax.errorbar(
                stats.x[keep],
                stats.mean[keep],
                yerr=np.nan_to_num(stats.stderr[keep]),
                fmt=markers[model],
                color=color,
                ms=3.5,
                capsize=2,
                elinewidth=0.8,
                label=_minus(name + law),
                zorder=3 if i == 0 else 2,
            )
            if fit is not None:
                x = np.geomspace(fit.x_min, fit.x_max, 50)
                ax.plot(x, fit(x), "-", color=color, lw=1.6 if i == 0 else 1.0, alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(analysis.sweep.swept.label + f" ${symbol}$")
        ax.set_ylabel(label)
        title = f"fit $\\propto {symbol}^b$: $b$ [{round(100 * _level(scaling))}% CI]"
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), title=title)
    _tidy(axes)
    return figure


def _level(scaling) -> float:
    fits = [*scaling.error_fits.values(), *scaling.mse_fits.values()]
    return fits[0].level if fits else 0.95


# ------------------------------------------------------------------------------ kernel motion


def missing_figures(analysis: Analysis) -> dict[str, str]:
    """The figures `plot_store` leaves out, with the reason: "kernel-motion" without any recorded
    kernel velocity or alignment with K₀, "infinite" without any distance from K∞, "alignment"
    without any label alignment (stores recorded before these were, or models without a K∞)."""
    missing = {}
    curves = [
        c for group in analysis.dynamics.values() for c in (group["kernel_velocity"], group["kernel_motion"])
    ]
    if not any(np.any(np.isfinite(c)) for c in curves):
        missing["kernel-motion"] = "no kernel velocity or alignment with K₀ recorded (an older store)"
    _, distance, _ = analysis.per_run("infinite_distance0")
    if not np.any(np.isfinite(distance)):
        missing["infinite"] = "no distance from K∞ recorded (a store from before it was, or not an MLP)"
    if not any(np.any(np.isfinite(group["label_alignment"])) for group in analysis.dynamics.values()):
        missing["alignment"] = "no label alignment recorded (a store from before it was)"
    return missing


@_styled
def kernel_motion_figure(analysis: Analysis) -> Figure:
    """How the kernel moves: kernel velocity 1 − A(K_prev, K_t) between consecutive records, its
    distance from initialisation 1 − A(K₀, K_t), and the test error of kernel regression with K_t,
    against epoch (Fort et al. 2020; Vyas, Bansal & Nakkiran 2022).

    Seed means per width, one line each on a sequential scale, the dot at the mean epoch of the
    minimum test loss. With log-spaced records each velocity spans a fixed ratio of epochs. A panel
    whose quantity the store does not hold (recorded before it was) says so.
    """
    figure = Figure(figsize=(WIDTH_IN, 2.5), layout="constrained")
    axes = figure.subplots(1, 3, sharex=True)
    groups = analysis.dynamics
    panels = (
        ("kernel_velocity", r"kernel velocity $1 - A(K_{t'}, K_t)$", "log"),
        ("kernel_motion", r"$1 - A(K_0, K_t)$", "log"),
        ("regression_error", r"kernel-regression test error ($K_t$)", "linear"),
    )
    for ax, (key, _, scale) in zip(axes, panels, strict=True):
        # 1 − A is 0 at epoch 0 by definition: on a log axis drawn from the first step on.
        _epoch_curves(ax, analysis, key, positive=scale == "log")
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        if any(np.any(np.isfinite(c[key]) & (c[key] > 0)) for c in groups.values()):
            ax.set_yscale(scale)
        else:
            ax.text(0.5, 0.5, "not recorded in this store", transform=ax.transAxes, ha="center")
            ax.set_yticks([])
        ax.set_ylabel(label)
    _minimum_legend(axes[0])
    _tidy(axes)
    _colorbar(figure, axes, analysis, list(groups))
    return figure


@_styled
def infinite_figure(analysis: Analysis) -> Figure:
    """The transition from the kernel side: ‖K − K∞‖_F / ‖K∞‖_F and 1 − A(K, K∞) at initialisation
    and at the minimum test loss against width, beside the trace ratio (T* − T₀) / T₀.

    Seed means with standard-error bars, single seeds faint, power laws dashed with their exponent
    and bootstrap interval; the trace ratio with its breakpoint (the shared one where fitted).
    """
    figure = Figure(figsize=(WIDTH_IN, 3.0), layout="constrained")
    axes = figure.subplots(1, 3, sharex=True)
    symbol = analysis.sweep.swept.symbol
    series = (
        ("infinite_distance", r"$\|K - K_\infty\|_F / \|K_\infty\|_F$"),
        ("infinite_misalignment", r"$1 - A(K, K_\infty)$"),
    )
    for ax, (stem_, label) in zip(axes, series, strict=False):
        for suffix, color, marker, when in (("0", "C0", "o", "init"), ("_at_min", "C1", "s", "at min.")):
            fit = analysis.fits.get(stem_ + suffix)
            text = f"{when}: {_exponent_label(fit, symbol)}" if fit is not None else when
            _points(ax, analysis, stem_ + suffix, 1.0, color, text, marker=marker)
            if fit is not None:
                x = np.geomspace(fit.x_min, fit.x_max, 50)
                ax.plot(x, fit(x), "--", color=color, lw=1.0, zorder=3)
        ax.set_ylabel(label)
    _points(axes[2], analysis, "trace_ratio", 1.0, "C0", "mean ± s.e.")
    joint = analysis.transition
    fit, index = (joint, 1) if joint is not None else (analysis.breakpoints.get("trace_ratio"), 0)
    if fit is not None:
        _breakpoint(axes[2], fit, index, analysis, symbol)
    axes[2].set_ylabel(r"trace ratio $(T_{\min} - T_0) / T_0$")
    for ax in axes:
        ax.set_xscale(_x_scale(analysis))
        ax.set_yscale("log")
        ax.set_xlabel(analysis.sweep.swept.label)
        # Below the panel: the points span the whole plot at both ends.
        ax.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=6.5, handlelength=1.2, frameon=False
        )
    _tidy(axes)
    return figure


# --------------------------------------------------------------------------------- alignment


@_styled
def alignment_figure(analysis: Analysis) -> Figure:
    """The reference study's App. E.3 (its Fig. 8): the label alignment A(K_t, yyᵀ) (eq. 16) and the
    rotation 1 − ‖U_rᵀ U′_r‖²_F / r of the top-r eigenvectors since the previous record (eq. 17, r the
    effective rank) against epoch, and A(K, yyᵀ) at initialisation and at the minimum test loss
    against width (or data size).

    Seed means per width on a sequential scale, the dot at the mean epoch of the minimum; with
    log-spaced records each rotation spans a fixed ratio of epochs.
    """
    figure = Figure(figsize=(WIDTH_IN, 2.6), layout="constrained")
    axes = figure.subplots(1, 3)
    panels = (
        ("label_alignment", r"label alignment $A(K_t, yy^\top)$"),
        ("eigenvector_rotation", r"top-$r$ rotation $1 - \|U_r^\top U_r'\|_F^2 / r$"),
    )
    for ax, (key, label) in zip(axes, panels, strict=False):
        _epoch_curves(ax, analysis, key)
        ax.set_yscale("log")
        ax.set_ylabel(label)
    _minimum_legend(axes[0])
    _points(axes[2], analysis, "label_alignment0", 1.0, "C0", "at init")
    _points(axes[2], analysis, "label_alignment_at_min", 1.0, "C1", "at min.", marker="s")
    axes[2].set_xscale(_x_scale(analysis))
    axes[2].set_yscale("log")
    axes[2].set_xlabel(analysis.sweep.swept.label)
    axes[2].set_ylabel(r"$A(K, yy^\top)$")
    axes[2].legend(loc="best")
    _tidy(axes)
    _colorbar(figure, axes[:2], analysis, list(analysis.dynamics))
    return figure


# ----------------------------------------------------------------------------------- helpers


def _epoch_curves(ax, analysis: Analysis, key: str, *, positive: bool = False) -> None:
    """The seed-mean curve `key` of `Analysis.dynamics` against epoch, one per width on a
    sequential scale, a dot at the mean epoch of the minimum; the epoch axis symlog from 0. With
    `positive` (for a log axis), epoch 0 and values <= 0 are left out."""
    palette = _palette(len(analysis.dynamics))
    for i, curves in enumerate(analysis.dynamics.values()):
        y = curves[key]
        if positive:
            y = np.where((y > 0) & (curves["epoch"] > 0), y, np.nan)
        i_min = int(np.argmin(np.abs(curves["epoch"] - curves["min_epoch"])))
        ax.plot(curves["epoch"], y, color=palette(i))
        ax.plot(curves["epoch"][i_min], y[i_min], "o", color=palette(i), mec="k", mew=0.5, ms=3.5, zorder=3)
    ax.set_xscale("symlog", linthresh=_first_positive(analysis), linscale=0.3)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("epoch")


def _minimum_legend(ax) -> None:
    """The legend entry of the dots `_epoch_curves` draws."""
    marker = Line2D([], [], ls="", marker="o", color="0.6", mec="k", mew=0.5, ms=3.5)
    ax.legend([marker], ["minimum test loss"], loc="best")


def _x_scale(analysis: Analysis) -> str:
    """Log for widths and data sizes; linear for fractions (which may be 0)."""
    return "log" if analysis.sweep.swept.log else "linear"


def _palette(n: int) -> ListedColormap:
    """n colours from viridis, stopping short of its palest yellow (hard to see on white)."""
    return ListedColormap(mpl.colormaps["viridis"](np.linspace(0.0, 0.88, max(n, 1))))


def _first_positive(analysis: Analysis) -> float:
    epochs = np.concatenate([r.records["epoch"] for r in analysis.runs])
    positive = epochs[epochs > 0]
    return float(positive.min()) if positive.size else 1.0


def _points(
    ax, analysis: Analysis, key: str, factor: float, color: str, label: str, marker: str = "o"
) -> None:
    """Single seeds (faint) and seed means with standard-error bars of one summary quantity."""
    x, y, _ = analysis.per_run(key)
    y = factor * y
    ax.plot(x, y, marker, color=color, alpha=0.25, ms=2.5, mew=0, zorder=1)
    rows = analysis.table.rows
    gx = np.array([row[analysis.x_name] for row in rows], dtype=float)
    gm = factor * np.array([row[key] for row in rows], dtype=float)
    se = np.nan_to_num(np.array([row[f"{key}_se"] for row in rows], dtype=float))
    keep = np.isfinite(gm)
    ax.errorbar(
        gx[keep],
        gm[keep],
        yerr=se[keep],
        fmt=marker,
        color=color,
        ms=4,
        capsize=2,
        elinewidth=0.8,
        label=label,
        zorder=2,
    )


def _power_law(ax, fit: PowerLaw | None, symbol: str, style: str = "--") -> None:
    if fit is None:
        return
    x = np.geomspace(fit.x_min, fit.x_max, 50)
    ax.plot(x, fit(x), style, color="k", lw=1.0, zorder=3, label=_exponent_label(fit, symbol))


def _exponent_label(fit: PowerLaw, symbol: str) -> str:
    pct = round(100 * fit.level)
    floor = f"$L_\\infty$ = {fit.offset:.2f} + " if fit.offset else ""
    law = f"$\\propto {symbol}^{{{fit.exponent:.2f}}}$"
    return _minus(f"{floor}{law}  [{fit.ci_low:.2f}, {fit.ci_high:.2f}] ({pct}% CI)")


def _minus(text: str) -> str:
    """Typographic minus signs outside mathtext (mathtext sets its own)."""
    parts = text.split("$")
    return "$".join(p if i % 2 else p.replace("-", "\u2212") for i, p in enumerate(parts))


def _breakpoint(ax, fit: Breakpoint, series: int, analysis: Analysis, symbol: str) -> None:
    x_all = analysis.per_run("trace0")[0]
    x = np.geomspace(x_all.min(), x_all.max(), 200)
    left, right = fit.slopes_left[series], fit.slopes_right[series]
    ax.plot(
        x,
        fit(x, series),
        "-",
        color="k",
        lw=1.0,
        zorder=3,
        label=_minus(f"fit: slope {left:.2f} → {right:.2f}"),
    )
    ax.axvspan(*fit.ci, color="C3", alpha=0.15, lw=0, zorder=0)
    pct = round(100 * fit.level)
    ax.axvline(
        fit.x,
        color="C3",
        ls="--",
        lw=1.0,
        zorder=0,
        label=f"${symbol}^* = {fit.x:.0f}$ [{fit.ci[0]:.0f}, {fit.ci[1]:.0f}] ({pct}% CI)",
    )


def _colorbar(figure: Figure, axes, analysis: Analysis, values: list[float]) -> None:
    """Discrete colour bar, one band per width (or size), labelled with its value."""
    n = len(values)
    mappable = mpl.cm.ScalarMappable(norm=BoundaryNorm(np.arange(n + 1) - 0.5, n), cmap=_palette(n))
    bar = figure.colorbar(mappable, ax=axes, ticks=np.arange(n), aspect=40, pad=0.01)
    bar.ax.set_yticklabels([f"{v:g}" for v in values])
    bar.set_label(analysis.sweep.swept.label)
    bar.ax.tick_params(length=0)


def _tidy(axes) -> None:
    """Panel letters; plain-number ticks (2, 3, 5 × 10^k) on log axes spanning under 1.5 decades."""
    plain = mticker.FuncFormatter(lambda value, _: f"{value:g}".replace("-", "\u2212"))
    for letter, ax in zip("abcdefghij", axes, strict=False):
        ax.set_title(f"({letter})", loc="left", fontweight="bold")
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(limits)
            if axis.get_scale() != "log" or lo <= 0 or np.log10(hi / lo) >= 1.5:
                continue
            if np.log10(hi / lo) < 0.5:  # too narrow for log-spaced ticks: linear steps
                axis.set_major_locator(mticker.MaxNLocator(4, steps=[1, 2, 2.5, 5, 10]))
            else:
                axis.set_major_locator(mticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(mticker.NullFormatter())
