"""Suite section "width": exact against stochastic spectra of the study MLP as it widens.

3-layer ReLU MLP 784 -> w -> w -> 10 (`_harness.study_mlp`), N = 128 inputs (K is 1280 x 1280): exact
through the structured kernel, exact through the generic Jacobian contraction (up to w = 1024), and
the stochastic spectrum at its default budget (up to w = 4096), timed, with peak memory, the error
against the exact spectrum and the crossover width, if any. One fresh process per (method, width).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from benchmarks import _harness as h
from ntkspec.memory import mlp_parameter_count
from ntkspec.spectrum import DEFAULT_BUDGET

METHODS = ("structured", "jacobian", "stochastic")
MARKERS = {"structured": "o", "jacobian": "s", "stochastic": "^"}


def task(task: dict) -> dict:
    """One (method, width) point, in a worker process."""
    width, n, method = task["width"], task["n"], task["method"]
    op = h.study_operator(width, n)
    params = sum(leaf.size for leaf in jax.tree.leaves(op.params))
    row = {"method": method, "width": width, "n": n, "rows": op.shape[0], "params": int(params)}
    # Best of 3 where a run is cheap; one run (after compilation) for the Jacobian path beyond
    # w = 256 (80 s at w = 1024) and for the stochastic spectrum of the widest networks.
    limit = {"structured": float("inf"), "jacobian": 500_000, "stochastic": 2_000_000}[method]
    repeats = 3 if params < limit else 1
    if method == "stochastic":
        budget = task["budget"] or DEFAULT_BUDGET
        row |= h.stochastic_spectrum(op, budget, repeats) | {"budget": budget}
        reference = h.exact_spectrum(op, "structured", 1)["effective_rank"]
    else:
        out = h.exact_spectrum(op, method, repeats)
        kernel = np.asarray(out.pop("kernel"))
        row |= out
        if method == "jacobian":
            k_s = np.asarray(h.exact_spectrum(op, "structured", 1)["kernel"])
            row["max_rel_diff_vs_structured"] = float(np.abs(kernel - k_s).max() / np.abs(k_s).max())
        reference = out["effective_rank"] if method == "structured" else None
    if reference is not None:
        row["exact_effective_rank"] = reference
        row["erank_rel_error"] = row["effective_rank"] / reference - 1
    row["repeats"] = repeats
    return row


def section(c: dict) -> dict:
    """The section at the settings `c` (`suite.SCALES[...]["width"]`): one worker per point."""
    rows = []
    for width in c["widths"]:
        for method in METHODS:
            base = {"method": method, "width": width, "n": c["n"]}
            if method == "jacobian" and width > c["jacobian_max"]:
                rows.append(base | {"skipped": f"w > {c['jacobian_max']}: its (N C)^2 P work grows as w^2"})
                continue
            if method == "stochastic" and width > c["stochastic_max"]:
                params = mlp_parameter_count(width)
                rows.append(
                    base | {"skipped": f"w > {c['stochastic_max']}: 400 matvecs of P = {params:,} on CPU"}
                )
                continue
            row = base | h.spawn_task({"kind": "width", **base, "budget": c["budget"]})
            rows.append(row)
            h.log(f"width: {json.dumps(h.brief(row))}")
    return {"settings": c, "rows": rows, "crossover": crossover(rows)}


def crossover(rows: list[dict]) -> dict:
    """Per exact path, the smallest width from which the stochastic spectrum is faster at every
    larger width measured (None if it is not faster at the largest common width)."""
    times = {(r["method"], r["width"]): r["seconds"] for r in rows if "seconds" in r}
    found = {}
    for exact in ("structured", "jacobian"):
        widths = sorted(w for m, w in times if m == "stochastic" and (exact, w) in times)
        crossing = None
        for w in reversed(widths):
            if times["stochastic", w] >= times[exact, w]:
                break
            crossing = w
        found[exact] = crossing
    return found


def render(result: dict, out: Path) -> dict:
    """Recompute the crossover and draw `width.png`."""
    result["crossover"] = crossover(result["rows"])
    _plot(result, out / "width.png")
    return result


def _plot(result: dict, path: Path) -> None:
    plt = h.pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in METHODS:
        pts = [r for r in result["rows"] if r["method"] == method and "seconds" in r]
        if not pts:
            continue
        w = [r["width"] for r in pts]
        label = {
            "structured": "exact (structured K)",
            "jacobian": "exact (Jacobian K)",
            "stochastic": "stochastic",
        }[method]
        ax_t.loglog(w, [r["seconds"] for r in pts], marker=MARKERS[method], label=label)
        ax_m.loglog(w, [r["peak_bytes"] / 2**20 for r in pts], marker=MARKERS[method], label=label)
    crossings: dict[int, list[str]] = {}
    for exact, width in result["crossover"].items():
        if width is not None:
            crossings.setdefault(width, []).append(exact)
    for width, beaten in crossings.items():
        ax_t.axvline(width, color="grey", ls="--", lw=1)
        ax_t.text(
            width,
            0.5,
            f" stochastic faster than\n exact ({', '.join(beaten)})",
            fontsize=7,
            transform=ax_t.get_xaxis_transform(),
        )
    rows = result["settings"]["n"] * 10
    ax_t.set(
        xlabel="width w", ylabel="seconds", title=f"time (N = {result['settings']['n']}, K {rows} x {rows})"
    )
    ax_m.set(xlabel="width w", ylabel="peak MiB (RSS rise + arguments)", title="peak memory")
    ax_t.legend(fontsize=7)
    h.save_figure(fig, path)


def summary(r: dict) -> list[str]:
    """The section's part of summary.md."""
    c = r["settings"]
    size = c["n"] * 10
    budget = next((row["budget"] for row in r["rows"] if "budget" in row), None)
    lines = [
        "## Width",
        "",
        f"3-layer ReLU MLP 784 → w → w → 10, N = {c['n']} uniform inputs (K is {size} × {size}). "
        'exact (structured) = compiled `op.dense("structured")` + `eigvalsh`, what `spectrum(op, "exact")` '
        'does; exact (jacobian) = the same with `op.dense("jacobian")`; stochastic = exact diagonal + '
        f"Krylov-aware estimator at the default budget ({budget} matvecs). Compilation not timed; peak = "
        "process RSS rise during the run + resident arguments, one fresh process per row; XLA bytes = "
        "`memory_analysis()` of the compiled programs (excludes SciPy's `eigvalsh`). "
        "The error column is the stochastic effective rank against the exact one, or K against K.",
        "![width](width.png)",
        "",
    ]
    rows = []
    for row in r["rows"]:
        head = [str(row["width"]), f"{mlp_parameter_count(row['width']):,}", row["method"]]
        if "skipped" in row or "error" in row:
            what = f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['error']}"
            rows.append(head + [what, "", "", ""])
            continue
        if row["method"] == "structured":
            err = f"reference (erank {row['effective_rank']:.1f})"
        elif row["method"] == "jacobian":
            err = f"{h.fmt_e(row.get('max_rel_diff_vs_structured'))} (K)"
        else:
            err = h.fmt_e(row.get("erank_rel_error"))
        rows.append(
            head + [h.fmt_s(row["seconds"]), h.fmt_b(row["peak_bytes"]), h.fmt_b(row["xla_bytes"]), err]
        )
    header = ["w", "parameters", "method", "time", "peak memory", "XLA bytes", "error vs exact"]
    cross = ", ".join(f"vs {k}: {'w = ' + str(v) if v else 'none'}" for k, v in r["crossover"].items())
    crossover_text = "Crossover (smallest width from which the stochastic spectrum is faster at every larger "
    return lines + h.table(header, rows, right_from=3) + ["", crossover_text + f"width run): {cross}.", ""]
