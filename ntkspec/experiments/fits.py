"""Statistics across seeds: ensembles, power laws and breakpoints with seed-bootstrap intervals.

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
import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

from ntkspec._errors import bad_value
from ntkspec.experiments.summaries import safe_divide


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
    offset: float = 0.0
    offset_ci: tuple[float, float] = (0.0, 0.0)

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self.offset + self.prefactor * np.asarray(x, dtype=np.float64) ** self.exponent

    def label(self, symbol: str = "x") -> str:
        """e.g. '∝ x^-0.52 [-0.60, -0.45]', or with an offset 'L∞ + ∝ x^-0.52 [...], L∞ = 0.31'."""
        law = f"∝ {symbol}^{self.exponent:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]"
        return (
            law
            if self.offset == 0
            else f"{law} above L∞ = {self.offset:.3g} [{self.offset_ci[0]:.3g}, {self.offset_ci[1]:.3g}]"
        )


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
    check_bootstrap(n_boot, level)
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
    boot_v, boot_w = _log_means(_paired_resample(values[0], np.random.default_rng(rng), n_boot))
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


def fit_offset_power_law(
    x: ArrayLike,
    y: ArrayLike,
    seeds: ArrayLike,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator | int = 0,
    n_grid: int = 200,
) -> PowerLaw:
    """Fit mean y = L∞ + prefactor · x^exponent with the floor L∞ a parameter; seed bootstrap CI.

    The fit covers the groups up to the one of lowest mean (the range where y falls; a loss that
    rises again past it, as an over-wide network's may, is left out), and profiles L∞ on a grid in
    [0, min mean): for each candidate the rest is the log-log line of `fit_power_law`, and the
    candidate of least squared log residual wins. Bootstrap replicates repeat the whole fit.
    """
    check_bootstrap(n_boot, level)
    xs, values = _seed_matrix(x, y, seeds)
    means = nanmean(values[0])
    if np.sum(np.isfinite(means)) < 3:
        raise bad_value("x, y", f"{int(np.sum(np.isfinite(means)))} group(s) with a mean", "at least 3")
    last = int(np.nanargmin(means))
    if last < 2:
        raise bad_value(
            "y",
            f"its lowest mean at the {last + 1}. group",
            "a falling range of at least 3 groups",
            "The quantity does not fall with x here.",
        )
    u = np.log(xs[: last + 1])

    def fit(group_means: np.ndarray) -> tuple[float, float, float]:
        top = np.nanmin(group_means)
        if not np.isfinite(top) or top <= 0:
            return (math.nan,) * 3
        best = (math.inf, math.nan, math.nan, math.nan)
        for floor in np.linspace(0.0, top, n_grid, endpoint=False):
            v = np.log(group_means - floor)
            w = np.isfinite(v).astype(np.float64)
            slope, intercept = _line(u, np.where(w > 0, v, 0.0)[None], w[None])
            sse = float(np.sum(w * (v - intercept[0] - slope[0] * u) ** 2, where=w > 0))
            if sse < best[0]:
                best = (sse, float(slope[0]), float(intercept[0]), float(floor))
        return best[1:]

    slope, intercept, floor = fit(means[: last + 1])
    draws = _paired_resample(values[0][: last + 1], np.random.default_rng(rng), n_boot)
    boot = np.array([fit(nanmean(draw)) for draw in draws])
    ok = np.all(np.isfinite(boot), axis=1)
    expanded = _expanded_level(level, values.shape[-1])
    lo, hi = _percentiles(boot[ok, 0], expanded)
    p_lo, p_hi = _percentiles(boot[ok, 1], expanded)
    return PowerLaw(
        exponent=slope,
        prefactor=math.exp(intercept),
        ci_low=lo,
        ci_high=hi,
        exponent_stderr=float(np.std(boot[ok, 0], ddof=1)) if ok.sum() > 1 else math.nan,
        prefactor_ci=(math.exp(p_lo), math.exp(p_hi)),
        r2=math.nan,
        x_min=float(xs[0]),
        x_max=float(xs[last]),
        n_points=last + 1,
        n_boot=int(ok.sum()),
        level=level,
        offset=floor,
        offset_ci=_percentiles(boot[ok, 2], expanded),
    )


def exponent_difference(a: PowerLaw, b: PowerLaw, level: float = 0.95) -> tuple[float, float, float]:
    """exponent(a) − exponent(b) and its interval at `level`, for fits to independent seeds (two
    sweeps): a normal interval with the bootstrap standard errors added in quadrature."""
    diff = a.exponent - b.exponent
    half = stats.norm.ppf(0.5 * (1 + level)) * math.hypot(a.exponent_stderr, b.exponent_stderr)
    return diff, diff - half, diff + half


def paired_exponent_difference(
    x: ArrayLike,
    y_a: ArrayLike,
    y_b: ArrayLike,
    seeds: ArrayLike,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator | int = 0,
) -> tuple[float, float, float]:
    """exponent(a) − exponent(b) of two power laws fitted to the same runs, and its interval.

    For two quantities of one sweep (e.g. a network's test error and its kernel's, per run): both
    are fitted on the groups where both means are positive, and each bootstrap replicate resamples
    the seed labels once for both, so the interval keeps their correlation across seeds (expanded
    percentile interval at `level`, as `fit_power_law`).
    """
    check_bootstrap(n_boot, level)
    xa, ya = _pair("x", x, "y_a", y_a)
    _, yb = _pair("x", x, "y_b", y_b)
    xs, values = _seed_matrix(xa, np.stack([ya, yb], axis=1), seeds)
    u = np.log(xs)
    v, w = _log_means(values)
    joint = np.prod(w, axis=0)
    if int(joint.sum()) < 2:
        raise bad_value(
            "x, y_a, y_b",
            f"{int(joint.sum())} group(s) where both means are positive",
            "at least 2",
        )
    slope, _ = _line(u, v, joint)
    boot_v, boot_w = _log_means(_paired_resample(values, np.random.default_rng(rng), n_boot))
    b_slope, _ = _line(u, boot_v, np.prod(boot_w, axis=1, keepdims=True))
    diff = b_slope[:, 0] - b_slope[:, 1]
    lo, hi = _percentiles(diff[np.isfinite(diff)], _expanded_level(level, values.shape[-1]))
    return float(slope[0] - slope[1]), lo, hi


def nanmean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean of the finite entries along `axis`; NaN where there is none (no warnings)."""
    finite = np.isfinite(values)
    return safe_divide(np.where(finite, values, 0.0).sum(axis=axis), finite.sum(axis=axis))


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
    check_bootstrap(n_boot, level)
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

    bv, bw = _log_means(_paired_resample(values, np.random.default_rng(rng), n_boot))
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


def _pair(x_name: str, x: ArrayLike, y_name: str, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.shape[:1] != xa.shape:
        raise bad_value(
            f"{x_name}, {y_name}", f"shapes {xa.shape} and {ya.shape}", "one entry per run in each"
        )
    return xa, ya


def check_bootstrap(n_boot: int, level: float) -> None:
    """Raise a clear error unless `n_boot` is an integer >= 2 and `level` lies in (0, 1)."""
    if not (isinstance(n_boot, int | np.integer) and n_boot >= 2):
        raise bad_value("n_boot", n_boot, "an integer >= 2")
    if not 0 < level < 1:
        raise bad_value("level", level, "a confidence level in (0, 1), e.g. 0.95")


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
    mean = nanmean(values)
    defined = np.isfinite(mean) & (mean > 0)
    return np.log(np.where(defined, mean, 1.0)), defined.astype(np.float64)


def _line(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares line v = a + b u per row of v, w (rows × points); NaN if singular."""
    sw, su, sv = w.sum(-1), (w * u).sum(-1), (w * v).sum(-1)
    suu, suv = (w * u * u).sum(-1), (w * u * v).sum(-1)
    slope = safe_divide(sw * suv - su * sv, sw * suu - su * su)
    return slope, safe_divide(sv - slope * su, sw)


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
    shift = np.clip(safe_divide(0.5 * (left - right), curvature), -1.0, 1.0)
    usable = (pick == inner) & (curvature > 0) & np.isfinite(shift)
    return grid[pick] + np.where(usable, shift, 0.0) * step


def _expanded_level(level: float, n_seeds: int) -> float:
    """Percentile level of Hesterberg's expanded percentile interval for `n_seeds` resampled units.

    The plain percentile bootstrap is too narrow for few units (its spread is that of a sample of n
    with divisor n, and normal rather than Student tails). The expanded interval takes the
    percentiles at 2 Phi(sqrt(n / (n - 1)) t_{n-1}((1 + level) / 2)) - 1 instead (Hesterberg, "What
    teachers should know about the bootstrap", Am. Stat. 2015). For 10 seeds and level 0.95: 0.983.
    """
    if n_seeds < 2:
        return level
    t = stats.t.ppf(0.5 * (1 + level), n_seeds - 1) * math.sqrt(n_seeds / (n_seeds - 1))
    return float(2 * stats.norm.cdf(t) - 1)


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    if samples.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
