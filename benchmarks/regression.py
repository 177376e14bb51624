"""Matrix-free kernel regression on empirical NTKs: CG iterations and time to a relative residual,
with and without the RPCholesky preconditioner, and the memory of a solve at N·C = 10⁵ rows.

Model: the study's MLP 784 → w → w → 10 (`ntkspec.models.build`, LeCun-normal, zero biases), float64
(a 1e-6 relative residual is below what float32 CG reaches on these kernels), on the first N samples
of a fixed permutation of MNIST t10k, N = 100, 1000, 10000 (N·C = 10³, 10⁴, 10⁵ rows). Targets are the
one-hot labels as one vector vec(Y) (N·C,); the ridge is λ = ρ × mean diag K (exact diagonal).
Per size, `ntkspec.regression.fit` with method "cg" and "pcg" (RPCholesky of rank r, blocks of 32
pivots), tol 1e-6, ρ in `--ridges` (10⁻³, 10⁻¹) and r in `--ranks` (128, 512), at most
`--max-iterations` CG steps. At 10⁵ rows, where one CG step costs about half a second on 2 cores,
only ρ = 10⁻¹ and r = 128 run, at most `--max-iterations-large` steps (at ρ = 10⁻³ a solve needs
thousands of steps). Seconds are one call's wall time, compilation and the preconditioner included;
the matvec's own time (one column and a block of 32, best of 3 after a warm-up) is recorded beside it.

Memory: in a fresh process, a preconditioned solve at N = 10000 (10⁵ rows, ρ = 10⁻¹, r = 128,
`--memory-iterations` steps; the peak is the preconditioner's block product and does not grow with
the iterations) after a warm-up call of the same shapes; measured = the rise of the resident set
during the second call (VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before)
+ the bytes of the arguments already resident. Predicted = `ntkspec.memory.matvec_bytes` for a
block of 32 probes, float64, + the solver's own arrays: n·(2 r + 2·32 + 8) floats (the factor F
and its left singular vectors U, the block's residual columns and their product, and about 8 CG
vectors).

Usage: python -m benchmarks.regression [--data-dir DIR] [--width 64] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._harness import best_time, rss_rise

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "regression.json"
BLOCK = 32
LARGE = 100_000  # rows from which the large-kernel settings apply


def _setup(n: int, width: int, data_dir: Path):
    """(operator, targets, ridge scale = mean diag K) for the first n samples of MNIST t10k."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ntkspec
    from ntkspec import data, models

    dataset = data.load("mnist", data_dir)
    order = np.asarray(jax.random.permutation(jax.random.key(0), dataset.x_train.shape[0]))[:n]
    x = jnp.asarray(dataset.x_train[order].reshape(n, -1), jnp.float64)
    y = jax.nn.one_hot(dataset.y_train[order], 10, dtype=jnp.float64).reshape(-1)
    model = models.build("mlp", (784,), 10, jax.random.key(1), width=width, depth=3, param_dtype=jnp.float64)
    op = ntkspec.ntk(model, x)
    return op, y, float(jnp.mean(op.diagonal()))


def _solves(n: int, args) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from ntkspec import regression

    op, y, mean_diagonal = _setup(n, args.width, args.data_dir)
    rows_count = op.shape[0]
    large = rows_count >= LARGE
    matvec = {
        k: best_time(op.matvec, jnp.ones((rows_count, k), jnp.float64), repeats=1 if large else 3)
        for k in (1, BLOCK)
    }
    ridges = args.large_ridges if large else args.ridges
    ranks = args.ranks[:1] if large else args.ranks
    cap = args.max_iterations_large if large else args.max_iterations
    runs = [(ridge, "cg", 0) for ridge in ridges] + [(r, "pcg", rank) for r in ridges for rank in ranks]
    out = []
    for relative_ridge, method, rank in sorted(runs):
        start = time.perf_counter()
        result = regression.fit(
            op,
            y,
            ridge=relative_ridge * mean_diagonal,
            method=method,
            key=jax.random.key(2),
            rank=max(rank, 1),
            max_iterations=cap,
        )
        jax.block_until_ready(result.coefficients)
        row = {
            "rows": rows_count,
            "n_samples": n,
            "width": args.width,
            "method": method,
            "rank": result.preconditioner_rank,
            "ridge": relative_ridge * mean_diagonal,
            "ridge_over_mean_diagonal": relative_ridge,
            "tol": result.tol,
            "max_iterations": cap,
            "iterations": result.iterations,
            "relative_residual": result.residual,
            "converged": result.converged,
            "status": result.status,
            "seconds": time.perf_counter() - start,
            "matvec_seconds_1_column": matvec[1],
            f"matvec_seconds_{BLOCK}_columns": matvec[BLOCK],
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        out.append(row)
    return out


def _memory_worker(args) -> dict:
    """One preconditioned solve at N = `args.memory_n` in this (fresh) process: predicted vs RSS."""
    import jax

    from ntkspec import memory, regression

    op, y, mean_diagonal = _setup(args.memory_n, args.width, args.data_dir)
    n = op.shape[0]

    def solve():
        return regression.fit(
            op,
            y,
            ridge=args.large_ridges[0] * mean_diagonal,
            key=jax.random.key(2),
            rank=args.ranks[0],
            max_iterations=args.memory_iterations,
        ).coefficients

    jax.block_until_ready(solve())  # compile; then measure a call of the same shapes
    resident = sum(leaf.nbytes for leaf in jax.tree.leaves((op, y)))
    measured = rss_rise(solve) + resident
    matvec = memory.matvec_bytes(args.width, args.memory_n, probe_block=BLOCK, itemsize=8)
    solver = 8 * n * (2 * args.ranks[0] + 2 * BLOCK + 8)
    return {
        "rows": n,
        "width": args.width,
        "rank": args.ranks[0],
        "predicted_matvec_bytes": matvec,
        "predicted_solver_bytes": solver,
        "predicted_bytes": matvec + solver,
        "measured_rss_bytes": measured,
        "predicted_over_measured": (matvec + solver) / measured,
        "dense_kernel_bytes": 8 * n * n,
    }


def _machine() -> dict:
    import jax

    model = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "platform": platform.platform(),
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.regression", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with mnist/")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--sizes", type=_ints, default=(100, 1000, 10000), help="N (N·C rows, C = 10)")
    parser.add_argument("--ridges", type=_floats, default=(1e-3, 1e-1), help="λ / mean diag K")
    parser.add_argument("--large-ridges", type=_floats, default=(1e-1,), help="λ / mean diag K at 10⁵ rows")
    parser.add_argument("--ranks", type=_ints, default=(128, 512), help="preconditioner ranks (10⁵: first)")
    parser.add_argument("--max-iterations", type=int, default=3000)
    parser.add_argument("--max-iterations-large", type=int, default=1000, help="cap at 10⁵ rows")
    parser.add_argument("--memory-n", type=int, default=10000)
    parser.add_argument("--memory-iterations", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    if args.memory_worker:
        print(json.dumps(_memory_worker(args)))
        return
    start = time.perf_counter()
    rows = [row for n in args.sizes for row in _solves(n, args)]
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--memory-worker"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # freed buffers go back: rises are peaks
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.regression", *passed, "--memory-worker"],
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    memory_row = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(memory_row), file=sys.stderr, flush=True)
    result = {
        "benchmark": "regression",
        "command": "python -m benchmarks.regression " + " ".join(passed),
        "machine": _machine(),
        "model": f"MLP 784 -> {args.width} -> {args.width} -> 10, float64, MNIST t10k",
        "solves": rows,
        "memory": memory_row,
        "wall_seconds": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
