"""Exact NTK of the study's 3-layer ReLU MLP (784 -> w -> w -> 10, `_harness.study_mlp`; N = 128:
a 1280 x 1280 kernel).

Times `dense()` on the structured path against the generic Jacobian-contraction path, and one
matvec, at several widths. Usage: python -m benchmarks.dense_kernel [--widths 256,1024,4096]
[--jacobian-max-width 1024] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import ntkspec
from benchmarks import _harness as h


def run(widths, jacobian_max_width: int, n: int = 128, repeats: int = 3) -> dict:
    x = h.uniform_inputs(n)
    rows = []
    for width in widths:
        model = h.study_mlp(width)
        op = ntkspec.ntk(model, x)
        n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        row = {"width": width, "params": int(n_params), "kernel_rows": op.shape[0]}
        row["structured_s"] = h.best_time(op.dense, "structured", repeats=repeats)
        v = jax.random.normal(jax.random.key(2), (op.shape[0],), jnp.float32)
        row["matvec_s"] = h.best_time(op.matvec, v, repeats=repeats)
        if width <= jacobian_max_width:
            row["jacobian_s"] = h.best_time(op.dense, "jacobian", repeats=1)
            k_s, k_j = np.asarray(op.dense("structured")), np.asarray(op.dense("jacobian"))
            row["max_relative_difference"] = float(np.abs(k_s - k_j).max() / np.abs(k_j).max())
            row["speedup"] = row["jacobian_s"] / row["structured_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"machine": h.machine(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="256,1024,4096")
    parser.add_argument("--jacobian-max-width", type=int, default=1024)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = run([int(w) for w in args.widths.split(",")], args.jacobian_max_width)
    h.write_json(args.out, result)


if __name__ == "__main__":
    main()
