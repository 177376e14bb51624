"""Exact NTK of a 3-layer ReLU MLP (784 -> w -> w -> 10, N = 128: a 1280 x 1280 kernel).

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
from benchmarks._timing import best_time, machine


class _MLP(nnx.Module):
    """784 -> w -> w -> 10 ReLU MLP, LeCun-normal weights, zero biases (the study's model)."""

    def __init__(self, width: int, rngs: nnx.Rngs):
        sizes = [784, width, width, 10]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes, sizes[1:], strict=False)])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def run(widths, jacobian_max_width: int, n: int = 128, repeats: int = 3) -> dict:
    x = jax.random.uniform(jax.random.key(0), (n, 784), jnp.float32)
    rows = []
    for width in widths:
        model = _MLP(width, nnx.Rngs(1))
        op = ntkspec.ntk(model, x)
        n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        row = {"width": width, "params": int(n_params), "kernel_rows": op.shape[0]}
        row["structured_s"] = best_time(op.dense, "structured", repeats=repeats)
        v = jax.random.normal(jax.random.key(2), (op.shape[0],), jnp.float32)
        row["matvec_s"] = best_time(op.matvec, v, repeats=repeats)
        if width <= jacobian_max_width:
            row["jacobian_s"] = best_time(op.dense, "jacobian", repeats=1)
            k_s, k_j = np.asarray(op.dense("structured")), np.asarray(op.dense("jacobian"))
            row["max_relative_difference"] = float(np.abs(k_s - k_j).max() / np.abs(k_j).max())
            row["speedup"] = row["jacobian_s"] / row["structured_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"machine": machine(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="256,1024,4096")
    parser.add_argument("--jacobian-max-width", type=int, default=1024)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = run([int(w) for w in args.widths.split(",")], args.jacobian_max_width)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
