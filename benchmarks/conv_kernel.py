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
over 784, 196 and 49 positions). Last, `matvec` on 32 columns (one probe block, what an estimator
asks for at a time), its loops in Python against `jax.lax.scan` (`operator._in_python`).

Usage: nice -n 10 python -m benchmarks.conv_kernel [--n 100,400] [--repeats 3]
    [--out benchmarks/results/conv_kernel.json]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import ntkspec
from benchmarks import _harness as h
from ntkspec import exact, models, operator


def _in_a_while_loop(f, x, chunk, structure):
    return jax.lax.map(f, x, batch_size=chunk)


def run(sizes, repeats: int) -> dict:
    model = models.build("cnn", (28, 28, 1), 4, jax.random.key(0), init="he_uniform")
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
        in_python, operator._in_python = operator._in_python, lambda op: False
        jax.clear_caches()
        row["matvec_32_scan_s"] = h.best_time(op.matvec, v, repeats=1)
        operator._in_python = in_python
        jax.clear_caches()
        row["matvec_speedup"] = row["matvec_32_scan_s"] / row["matvec_32_s"]
        rows.append(row)
        print(row, flush=True)
    return {"machine": h.machine(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="100,400", help="NTK batch sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    h.write_json(args.out, run([int(n) for n in args.n.split(",")], args.repeats))


if __name__ == "__main__":
    main()
