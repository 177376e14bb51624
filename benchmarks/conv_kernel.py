"""The exact NTK of the noise experiment's CNN: convolutions on the structured path (input patches
times sensitivities) against the generic path (per-sample Jacobians), and the chunks of samples in a
Python loop against `jax.lax.map`, for the kernel and for the operator's products K V.

The model is `ntkspec.models.CNN` as `mnist4-noise-cnn` builds it (three 3 x 3 convolutions of 32
filters with average pooling, Dense 64, 4 classes, He-uniform) on N uniform 28 x 28 inputs, so K is
4N x 4N. Times `diagonal()` (the trace a sweep takes at every evaluation) and `dense()` (a record's
kernel) on both paths, best of `--repeats` after a warm-up, and their largest relative difference;
then the generic path again with its chunks in `jax.lax.map`, as before `exact._map` (a `while`
loop, in which XLA:CPU runs convolutions slowly: jax-ml/jax#12868). The generic path also takes
the two small Dense layers, which the structured path serves by their own rule; their share of
either time is small (288 x 64 and 64 x 4 weights against the convolutions' 18,816 parameters
over 784, 196 and 49 positions). Then `matvec` on 32 columns (one probe block, what an estimator
asks for at a time), its loops in Python against `jax.lax.scan` (`NTKOperator.loops_in_python`).
Last, at N = `--estimator-n`, the estimators that loop over those products, stepped from Python
(now) against their compiled loops (before: the operator's matvec inside a `fori_loop` or
`while_loop`): `spectrum(op, "stochastic")` (the Krylov-aware estimator) and `top_eigenpairs`, one
call each after a warm-up (compiling), with the relative difference of their results.

Usage: nice -n 10 python -m benchmarks.conv_kernel [--n 100,400] [--repeats 3] [--estimator-n 100]
    [--budget 100] [--out benchmarks/results/conv_kernel.json]
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

import ntkspec
from benchmarks import _harness as h
from ntkspec import exact, models, operator


def _in_a_while_loop(f, x, chunk, structure):
    return jax.lax.map(f, x, batch_size=chunk)


def _cnn():
    return models.build("cnn", (28, 28, 1), 4, jax.random.key(0), init="he_uniform")


def run(sizes, repeats: int) -> dict:
    model = _cnn()
    rows = []
    for n in sizes:
        x = jax.random.uniform(jax.random.key(1), (n, 28, 28, 1))
        op = ntkspec.ntk(model, x)
        row = {"n": n, "kernel_rows": op.shape[0]}
        for name, fn in (("diagonal", op.diagonal), ("dense", op.dense)):
            for path in ("structured", "jacobian"):
                row[f"{name}_{path}_s"] = h.best_time(fn, path, repeats=repeats)
            row[f"{name}_speedup"] = row[f"{name}_jacobian_s"] / row[f"{name}_structured_s"]
            a, b = np.asarray(fn("structured")), np.asarray(fn("jacobian"))
            row[f"{name}_max_relative_difference"] = float(np.abs(a - b).max() / np.abs(b).max())
            mapped, exact._map = exact._map, _in_a_while_loop
            jax.clear_caches()
            row[f"{name}_jacobian_while_s"] = h.best_time(fn, "jacobian", repeats=1)
            exact._map = mapped
            jax.clear_caches()
        v = jax.random.normal(jax.random.key(2), (op.shape[0], 32))
        row["matvec_32_s"] = h.best_time(op.matvec, v, repeats=repeats)
        in_python, operator.NTKOperator.loops_in_python = operator.NTKOperator.loops_in_python, False
        jax.clear_caches()
        row["matvec_32_scan_s"] = h.best_time(op.matvec, v, repeats=1)
        operator.NTKOperator.loops_in_python = in_python
        jax.clear_caches()
        row["matvec_speedup"] = row["matvec_32_scan_s"] / row["matvec_32_s"]
        rows.append(row)
        print(row, flush=True)
    return {"machine": h.machine(), "rows": rows}


def estimators(n: int, budget: int) -> dict:
    """The stochastic spectrum and the top eigenpairs of the CNN's NTK on N = `n` inputs, their loops
    stepped from Python (one call after a warm-up) against compiled ahead of time, with the
    operator's matvec passed as a plain callable (one call)."""
    op = ntkspec.ntk(_cnn(), jax.random.uniform(jax.random.key(1), (n, 28, 28, 1)))
    key, rows = jax.random.key(3), op.shape[0]
    trace = float(np.sum(np.asarray(op.diagonal(), np.float64)))
    pairs = {"k": 4, "block_size": 4, "budget": 40}
    out = {"n": n, "kernel_rows": rows, "budget": budget, "top_eigenpairs": pairs}
    for name, estimator, options, value in (
        ("spectrum", ntkspec.krylov_spectrum, {"trace": trace, "budget": budget}, lambda r: r.effective_rank),
        ("top_eigenpairs", ntkspec.top_eigenpairs, pairs, lambda r: r.values),
    ):
        stepped = functools.partial(estimator, op, key, **options)
        jax.block_until_ready(stepped())  # warm-up: the eager steps compile
        out[f"{name}_stepped_s"], _, stepped = h.timed_run(stepped, 1)
        out[f"{name}_compiled_loops_s"], _, reference = h.timed_run(
            _compiled_loops(estimator, op, key, options), 1
        )
        out[f"{name}_speedup"] = out[f"{name}_compiled_loops_s"] / out[f"{name}_stepped_s"]
        a, b = np.asarray(value(stepped)), np.asarray(value(reference))
        out[f"{name}_max_relative_difference"] = float(np.abs(a - b).max() / np.abs(b).max())
        print({k: v for k, v in out.items() if k.startswith(name)}, flush=True)
    return out


def _compiled_loops(estimator, op, key, options):
    """`estimator` on the operator's matvec as a plain callable (its loops compiled, as before),
    compiled ahead of time; returns the call."""

    def on_callable(o, k):
        return estimator(o.matvec, k, n=o.shape[0], dtype=o.dtype, **options)

    return functools.partial(jax.jit(on_callable).lower(op, key).compile(), op, key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100,400", help="NTK batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--estimator-n", type=int, default=100, help="NTK batch of the estimators (0: skip)")
    parser.add_argument("--budget", type=int, default=100, help="matvecs of the stochastic spectrum")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = run([int(n) for n in args.n.split(",")], args.repeats) if args.n else {"machine": h.machine()}
    if args.estimator_n:
        result["estimators"] = estimators(args.estimator_n, args.budget)
    h.write_json(args.out, result)


if __name__ == "__main__":
    main()
