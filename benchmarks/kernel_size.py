"""Suite section "kernel-size": matrix-free costs of the study MLP's NTK as N C grows.

The MLP 784 -> w -> w -> 10 at a fixed small width, N C from 10^3 to 10^5 rows: one matvec block and
the stochastic spectrum (matrix-free), timed, with peak memory and its log-log slope in N C; beside
them the exact spectrum while K is small enough, for the error and the crossover in N C. One fresh
process per (method, N).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _harness as h
from ntkspec import memory

METHODS = ("matvec", "stochastic")
MARKERS = {"matvec": "o", "stochastic": "^"}


def task(task: dict) -> dict:
    """One (method, N) point, in a worker process."""
    width, n, method = task["width"], task["n"], task["method"]
    op = h.study_operator(width, n)
    rows = op.shape[0]
    row = {"method": method, "width": width, "n": n, "rows": rows, "dense_kernel_bytes": rows * rows * 4}
    repeats = 3 if rows <= 10_000 else 1
    if method == "matvec":
        v = jax.random.normal(jax.random.key(2), (rows, op.probe_block), jnp.float32)
        start = time.perf_counter()
        matmat = h.compile_matvec(op, v)
        row["compile_s"] = time.perf_counter() - start
        seconds, rise, _ = h.timed_run(lambda: matmat(op, v), repeats)
        row |= {
            "seconds": seconds,
            "peak_bytes": rise + h.argument_bytes(op, v),
            "xla_bytes": h.xla_peak(matmat),
            "probes": op.probe_block,
            "model_bytes": memory.matvec_bytes(
                width, n, probe_block=op.probe_block, chunk_size=op.chunk_size
            ),
        }
    else:
        row |= h.stochastic_spectrum(op, task["budget"], repeats) | {"budget": task["budget"]}
        if rows <= task["exact_max_rows"]:  # the exact spectrum, for the error and the crossover
            exact = h.exact_spectrum(op, "structured", 1)
            row["exact_effective_rank"] = exact["effective_rank"]
            row["erank_rel_error"] = row["effective_rank"] / exact["effective_rank"] - 1
            row["exact_seconds"], row["exact_peak_bytes"] = exact["seconds"], exact["peak_bytes"]
    row["repeats"] = repeats
    return row


def section(c: dict) -> dict:
    """The section at the settings `c` (`suite.SCALES[...]["kernel"]`): one worker per point."""
    rows = []
    for n in c["ns"]:
        for method in METHODS:
            task = {"kind": "kernel-size", "method": method, "width": c["width"], "n": n}
            row = {"method": method, "n": n} | h.spawn_task(
                task | {"budget": c["budget"], "exact_max_rows": c["exact_max_rows"]}
            )
            rows.append(row)
            h.log(f"kernel-size: {json.dumps(h.brief(row))}")
    return {"settings": c, "rows": rows} | fits(rows)


def fits(rows: list[dict]) -> dict:
    """Log-log slopes of peak memory against N C (all points, and from 10^4 rows on, where fixed
    costs matter less), and the crossover: smallest N C from which the stochastic spectrum is faster
    than the exact one at every larger size where both ran."""
    slopes, upper = {}, {}
    for method in METHODS:
        pts = [r for r in rows if r["method"] == method and "peak_bytes" in r]
        slopes[method] = _loglog_slope(pts)
        upper[method] = _loglog_slope([r for r in pts if r["rows"] >= 10_000])
    both = sorted((r["rows"], r["seconds"] < r["exact_seconds"]) for r in rows if "exact_seconds" in r)
    crossing = None
    for size, faster in reversed(both):
        if not faster:
            break
        crossing = size
    return {"memory_slope": slopes, "memory_slope_from_1e4": upper, "crossover_rows": crossing}


def _loglog_slope(rows: list[dict]) -> float | None:
    """Least-squares slope of log(peak bytes) against log(N C)."""
    if len(rows) < 2:
        return None
    x = np.log([r["rows"] for r in rows])
    y = np.log([r["peak_bytes"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def render(result: dict, out: Path) -> dict:
    """Recompute the fits and draw `kernel_size.png`."""
    result |= fits(result["rows"])
    _plot(result, out / "kernel_size.png")
    return result


def _plot(result: dict, path: Path) -> None:
    plt = h.pyplot()
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(9, 3.4))
    rows = result["rows"]
    for method in METHODS:
        pts = [r for r in rows if r["method"] == method and "peak_bytes" in r]
        if not pts:
            continue
        slope = result["memory_slope"][method]
        label = f"{method} (slope {slope:.2f})" if slope is not None else method
        size = [r["rows"] for r in pts]
        ax_m.loglog(size, [r["peak_bytes"] for r in pts], marker=MARKERS[method], label=label)
        ax_t.loglog(size, [r["seconds"] for r in pts], marker=MARKERS[method], label=method)
    exact = [r for r in rows if "exact_seconds" in r]
    if exact:
        size = [r["rows"] for r in exact]
        label = "exact (structured K + eigvalsh)"
        ax_m.loglog(size, [r["exact_peak_bytes"] for r in exact], marker="s", label=label)
        ax_t.loglog(size, [r["exact_seconds"] for r in exact], marker="s", label=label)
    if result.get("crossover_rows"):
        ax_t.axvline(result["crossover_rows"], color="grey", ls="--", lw=1)
        ax_t.text(
            result["crossover_rows"],
            0.8,
            " stochastic faster\n than exact",
            fontsize=7,
            transform=ax_t.get_xaxis_transform(),
        )
    nc = sorted({r["rows"] for r in rows if "rows" in r})
    ax_m.loglog(nc, [4 * n * n for n in nc], "k--", lw=1, label="dense K alone, 4 (N C)^2 bytes")
    width = result["settings"]["width"]
    ax_m.set(xlabel="N C (kernel rows)", ylabel="peak bytes", title=f"memory, width {width}")
    ax_t.set(xlabel="N C (kernel rows)", ylabel="seconds", title="time")
    ax_m.legend(fontsize=7)
    ax_t.legend(fontsize=7)
    h.save_figure(fig, path)


def summary(r: dict) -> list[str]:
    """The section's part of summary.md."""
    c = r["settings"]
    lines = [
        "## Kernel size",
        "",
        f"Same MLP at width {c['width']}, C = 10, matrix-free: one matvec block (K V for V with "
        f"`probe_block` columns) and the stochastic spectrum at budget {c['budget']}; beside the stochastic "
        f"rows, where K has ≤ {c['exact_max_rows']:,} rows, the exact spectrum (structured K + `eigvalsh`, "
        "same process, after it) for its time, memory and the error. Peak = RSS rise + resident arguments "
        "(the inputs, 784 floats per sample, included); model = `ntkspec.memory.matvec_bytes`. "
        "![kernel size](kernel_size.png)",
        "",
    ]
    rows = []
    for row in r["rows"]:
        head = [str(row["n"]), f"{row['n'] * 10:,}", row["method"]]
        if "error" in row:
            rows.append(head + [f"failed: {row['error']}"] + [""] * 7)
            continue
        exact = "exact_seconds" in row
        rows.append(
            head
            + [
                h.fmt_s(row["seconds"]),
                h.fmt_b(row["peak_bytes"]),
                h.fmt_b(row["xla_bytes"]),
                h.fmt_b(row.get("model_bytes")),
                h.fmt_b(row["dense_kernel_bytes"]),
                h.fmt_s(row["exact_seconds"]) if exact else "–",
                h.fmt_b(row["exact_peak_bytes"]) if exact else "–",
                h.fmt_e(row.get("erank_rel_error")),
            ]
        )
    header = ["N", "N·C", "method", "time", "peak memory", "XLA bytes", "model", "dense K"]
    header += ["exact: time", "exact: peak", "erank error"]

    def slopes(fits: dict) -> str:
        return ", ".join(f"{m} {s:.2f}" for m, s in fits.items() if s is not None)

    fit = (
        f"Log-log slope of peak memory against N·C: {slopes(r['memory_slope'])} over all sizes; "
        f"{slopes(r['memory_slope_from_1e4'])} from 10⁴ rows on (a dense kernel: 2). Crossover (smallest "
        "N·C from which the stochastic spectrum is faster than the exact one at every larger size run): "
        + (f"{r['crossover_rows']:,} rows." if r.get("crossover_rows") else "none.")
    )
    return lines + h.table(header, rows, right_from=3) + ["", fit, ""]
