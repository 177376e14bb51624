"""Per-run derived quantities: the minimum test loss and what the kernel looks like there.

Per run (records r = 0 .. n-1 of one training run):

* the minimum test loss and the record r* where it is reached;
* T0 = tr K at the first record (initialisation) and the trace ratio (T(r*) - T0) / T0;
* effective rank and cosine effective rank at r*;
* the alignment A(K0, K*) of the NTK at r* with the one at initialisation (1 - A: how far the kernel
  moved; NaN for stores recorded before it was);
* the kernel's distance from the infinite-width NTK, ‖K − K∞‖_F / ‖K∞‖_F, and its misalignment
  1 − A(K, K∞), at initialisation (record 0) and at r*, and the test error of kernel regression with
  K at r* (NaN for stores recorded before these were, and for models without a K∞);
* the adaptation rate dT / d ln L_train at r*: T and ln L_train are smoothed by a centred running
  mean over `window` records (by default a tenth of the run's records), then differentiated,
  dT/dlnL = (dT/dt) / (dlnL/dt) with `np.gradient`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

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
    "label_alignment0": "A(K0, yy')",
    "label_alignment_at_min": "A(K*, yy')",
    "infinite_distance0": "|K0-Kinf|/|Kinf|",
    "infinite_distance_at_min": "|K*-Kinf|/|Kinf|",
    "infinite_misalignment0": "1-A(K0, Kinf)",
    "infinite_misalignment_at_min": "1-A(K*, Kinf)",
    "regression_error_at_min": "kernel regr. error",
}

#: Quantities fitted with a power law against width (or data size). The cosine NTK's effective
#: rank is the primary one (the study's App. B.3: it corrects for the gradients' magnitudes).
FITTED = (
    "min_test_loss",
    "trace0",
    "adaptation_rate_at_min",
    "cosine_effective_rank_at_min",
    "effective_rank_at_min",
    "trace_ratio",
    "infinite_distance0",
    "infinite_distance_at_min",
    "infinite_misalignment0",
    "infinite_misalignment_at_min",
)
_REQUIRED = ("epoch", "train_loss", "test_loss", "trace", "effective_rank")
_OPTIONAL = (
    "cosine_effective_rank",
    "test_accuracy",
    "init_alignment",
    "label_alignment",
    "infinite_distance",
    "infinite_alignment",
    "regression_error",
)
#: Epochs of the running means of the adaptation rate from a trajectory (the study's App. B.4).
RATE_EPOCHS = 20


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
    return safe_divide(total, count)


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
    return safe_divide(dt, dl)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """Derived quantities of one run at its minimum test loss: measured at the exact epoch of the
    minimum where the run has that measurement (`exact_minimum`), else taken at the record of lowest
    test loss (`min_index`, the nearest record either way)."""

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
    label_alignment0: float = float("nan")
    label_alignment_at_min: float = float("nan")
    infinite_distance0: float = float("nan")
    infinite_distance_at_min: float = float("nan")
    infinite_misalignment0: float = float("nan")
    infinite_misalignment_at_min: float = float("nan")
    regression_error_at_min: float = float("nan")
    exact_minimum: bool = False

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def run_summary(
    records: Mapping[str, ArrayLike],
    *,
    window: int | None = None,
    at_min: Mapping[str, float] | None = None,
    trajectory: Mapping[str, ArrayLike] | None = None,
    rate_epochs: int = RATE_EPOCHS,
) -> RunSummary:
    """Summarise one run from its record arrays, and its measurement at the minimum if it has one.

    Parameters
    ----------
    records
        1-D arrays over records, all of one length: `epoch`, `train_loss`, `test_loss`, `trace`,
        `effective_rank`; optionally `cosine_effective_rank`, `test_accuracy`, `init_alignment`,
        `label_alignment`, `infinite_distance`, `infinite_alignment` and `regression_error` (NaN if
        absent).
        The first record is taken to be the initialisation (T0 = trace[0]).
    window
        Records in the running mean used for the adaptation rate from records (default:
        `default_window`).
    at_min
        The `Record` fields measured at the exact epoch of the minimum test loss (`epoch`,
        `test_loss`, `trace`, ...): the quantities "at the minimum" are taken from it.
    trajectory
        `epoch`, `trace` and `train_loss` every few epochs: the adaptation rate is then the study's
        (App. B.4): running means of T and ln L_train over `rate_epochs` epochs, their numerical
        derivative, at the trajectory point nearest the minimum.
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
    at = {name: float(values[i]) for name, values in arrays.items()}
    at.update({name: nan[i] for name in _OPTIONAL if name not in at})
    first = {
        name: float(arrays.get(name, nan)[0])
        for name in ("label_alignment", "infinite_distance", "infinite_alignment")
    }
    exact = at_min is not None and np.isfinite(at_min.get("test_loss", np.nan))
    if exact:
        at.update({name: float(at_min.get(name, np.nan)) for name in (*_REQUIRED, *_OPTIONAL)})
        i = int(np.argmin(np.abs(arrays["epoch"] - at["epoch"])))
    if trajectory is not None and len(trajectory.get("trace", ())) > 1 and exact:
        epochs = np.asarray(trajectory["epoch"], dtype=np.float64)
        step = float(np.median(np.diff(epochs)))
        points = max(1, round(rate_epochs / step)) if step > 0 else 1
        rates = adaptation_rate(trajectory["trace"], trajectory["train_loss"], points)
        rate = float(rates[int(np.argmin(np.abs(epochs - at["epoch"])))])
    else:
        rate = float(adaptation_rate(trace, arrays["train_loss"], window)[i])
    return RunSummary(
        n_records=n,
        min_index=i,
        min_epoch=at["epoch"],
        min_test_loss=at["test_loss"],
        test_accuracy_at_min=at["test_accuracy"],
        train_loss_at_min=at["train_loss"],
        trace0=t0,
        trace_at_min=at["trace"],
        trace_ratio=float(safe_divide(np.float64(at["trace"] - t0), np.float64(t0))),
        effective_rank_at_min=at["effective_rank"],
        cosine_effective_rank_at_min=at["cosine_effective_rank"],
        adaptation_rate_at_min=rate,
        init_alignment_at_min=at["init_alignment"],
        label_alignment0=first["label_alignment"],
        label_alignment_at_min=at["label_alignment"],
        infinite_distance0=first["infinite_distance"],
        infinite_distance_at_min=at["infinite_distance"],
        infinite_misalignment0=1.0 - first["infinite_alignment"],
        infinite_misalignment_at_min=1.0 - at["infinite_alignment"],
        regression_error_at_min=at["regression_error"],
        exact_minimum=bool(exact),
    )


def safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 or either is non-finite (no warnings)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    ok = np.isfinite(num) & np.isfinite(den) & (den != 0)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=ok)
