"""ntkspec's exact kernel against neural-tangents' `empirical_ntk_fn` (implementations 1, 2, 3) and a
dense-Jacobian baseline, on identical weights and inputs, in one run on one machine.

Beside them, the arithmetic floor of the Dense rule that ntkspec and neural-tangents' implementation 3
both apply: the backward product of the N C output sensitivities through the w x w hidden weight,
Delta_1 = (Delta_2 W_2^T) * mask, and the two hidden layers' Grams Delta_1 Delta_1^T + Delta_2 Delta_2^T
(everything else is O(N C w + N^2 d) or smaller), timed as bare XLA products on random operands of
those shapes. best NT / floor bounds the speed-up any implementation of that rule could have.

neural-tangents does not import on current JAX, so it runs in its own venv
(`bash benchmarks/setup_neural_tangents.sh` makes it; never a dependency of ntkspec), in a
subprocess; ntkspec runs in this process. The network is the study's `ntkspec.models` MLP
(`_harness.study_mlp`); `_nt_worker.py` applies the same weights through its own plain-function copy
of it, the form neural-tangents takes. Usage:
python -m benchmarks.anchors [--widths 256,1024,4096] [--venv benchmarks/.nt-venv] [--out FILE.json]
(implementations 1, 2 and the Jacobian baseline only up to w = 1024: beyond, J alone is ~100 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ntkspec
from benchmarks import _harness as h

HERE = Path(__file__).parent
NT_VENV = HERE / ".nt-venv"
SAVED = HERE / "results" / "anchors.json"
CANDIDATES = ("nt_impl1", "nt_impl2", "nt_impl3", "jacobian_baseline")
JACOBIAN_BASED = ("nt_impl1", "nt_impl2", "jacobian_baseline")


def _weights(model) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel, bias) of each Dense layer, for `_nt_worker.py`'s plain-function copy of the MLP."""
    return [(np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])) for layer in model.layers]


def gemm_floor(width: int, rows: int) -> float:
    """Seconds of the Dense rule's large products for this MLP, on random float32 operands.

    Delta_1 = (Delta_2 W_2^T) * mask, then Delta_1 Delta_1^T + Delta_2 Delta_2^T: 2 rows w^2 + 4 rows^2 w
    flops, the work no implementation of the rule avoids.
    """
    keys = jax.random.split(jax.random.key(1), 3)
    delta_2 = jax.random.normal(keys[0], (rows, width), jnp.float32)
    w_2 = jax.random.normal(keys[1], (width, width), jnp.float32)
    mask = jax.random.bernoulli(keys[2], 0.5, (rows, width)).astype(jnp.float32)

    @jax.jit
    def products(delta_2, w_2, mask):
        delta_1 = (delta_2 @ w_2.T) * mask
        return delta_1 @ delta_1.T + delta_2 @ delta_2.T

    return h.best_time(products, delta_2, w_2, mask, repeats=5)


def run(widths, venv: Path, n: int = 128, jacobian_max_width: int = 1024) -> dict:
    python = venv / "bin" / "python"
    x = np.asarray(h.uniform_inputs(n))
    rows = []
    for width in widths:
        model = h.study_mlp(width, key=width)
        weights = _weights(model)
        op = ntkspec.ntk(model, jnp.asarray(x))
        row = {"width": width, "ntkspec_structured_s": h.best_time(op.dense, "structured")}
        row["gemm_floor_s"] = gemm_floor(width, n * 10)
        ours = np.asarray(op.dense("structured"))
        with tempfile.TemporaryDirectory() as tmp:
            arrays = {"x": x} | {f"w{i}": w for i, (w, _) in enumerate(weights)}
            arrays |= {f"b{i}": b for i, (_, b) in enumerate(weights)}
            np.savez(Path(tmp) / "in.npz", **arrays)
            for name in CANDIDATES:
                if name in JACOBIAN_BASED and width > jacobian_max_width:
                    continue
                out = Path(tmp) / f"{name}.npy"
                done = subprocess.run(
                    [str(python), str(HERE / "_nt_worker.py"), str(Path(tmp) / "in.npz"), str(out), name],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:  # e.g. killed for memory: recorded, and the run goes on
                    row[name + "_error"] = f"exit {done.returncode}: {h.last_error(done.stderr)}"
                    continue
                row |= json.loads(done.stdout.strip().splitlines()[-1])
                k = np.load(out)
                row[name + "_max_rel_diff"] = float(np.abs(k - ours).max() / np.abs(ours).max())
        timed = [row[k] for k in row if k.startswith("nt_impl") and k.endswith("_s")]
        if timed:
            row["best_nt_s"] = min(timed)
            row["speedup_vs_best_nt"] = row["best_nt_s"] / row["ntkspec_structured_s"]
            row["best_nt_over_floor"] = row["best_nt_s"] / row["gemm_floor_s"]
        row["ntkspec_over_floor"] = row["ntkspec_structured_s"] / row["gemm_floor_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"machine": h.machine(), "rows": rows}


def section(*, quick: bool, nt_venv: Path | None, rerun: bool, widths) -> dict:
    """Suite section "anchors": `run` in the neural-tangents venv, or its saved results
    (`results/anchors.json`) unless asked to rerun; skipped in quick runs."""
    if quick:
        return {"skipped": "quick run: neural-tangents anchors are not run (about 12 min)"}
    venv = nt_venv or NT_VENV
    if not rerun and SAVED.exists():
        return json.loads(SAVED.read_text()) | {"source": f"reused {SAVED.relative_to(HERE.parent)}"}
    if not (venv / "bin" / "python").exists():
        return {"skipped": "no neural-tangents venv: run `bash benchmarks/setup_neural_tangents.sh`"}
    return run(widths, venv) | {"source": f"run now in {venv}"}


def summary(r: dict) -> list[str]:
    """The section's part of summary.md."""
    lines = ["## Anchors: neural-tangents", ""]
    if "rows" not in r:
        return lines + [f"Skipped: {r.get('skipped') or r.get('error')}", ""]
    lines += [
        "Exact kernel of the same MLP (N = 128) against neural-tangents' `empirical_ntk_fn` "
        f"({r.get('source', '')}; measured {r['machine']['date']}). Max rel. difference against ntkspec "
        "in brackets. GEMM floor: the Dense rule's large products alone (Δ_1 = (Δ_2 W_2ᵀ) ⊙ mask, then "
        "Δ_1 Δ_1ᵀ + Δ_2 Δ_2ᵀ) as bare XLA products; best NT / floor bounds the speed-up any "
        "implementation of that rule could have over neural-tangents.",
        "",
    ]
    rows = []
    for row in r["rows"]:
        cells = [str(row["width"]), h.fmt_s(row["ntkspec_structured_s"])]
        for name in CANDIDATES:
            if name + "_s" in row:
                cells.append(f"{h.fmt_s(row[name + '_s'])} ({row[name + '_max_rel_diff']:.0e})")
            else:
                cells.append(row.get(name + "_error", "–"))
        floor = row.get("gemm_floor_s")
        cells.append("–" if floor is None else h.fmt_s(floor))
        for ratio in ("speedup_vs_best_nt", "best_nt_over_floor"):
            cells.append("–" if row.get(ratio) is None else f"{row[ratio]:.1f}×")
        rows.append(cells)
    header = ["w", "ntkspec structured", "NT impl 1", "NT impl 2", "NT impl 3", "Jacobian baseline"]
    header += ["GEMM floor", "speed-up vs best NT", "best NT / floor"]
    return lines + h.table(header, rows) + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="256,1024,4096")
    parser.add_argument("--venv", type=Path, default=NT_VENV)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not (args.venv / "bin" / "python").exists():
        sys.exit(f"No venv at {args.venv}: run `bash benchmarks/setup_neural_tangents.sh` first.")
    result = run([int(w) for w in args.widths.split(",")], args.venv)
    h.write_json(args.out, result)


if __name__ == "__main__":
    main()
