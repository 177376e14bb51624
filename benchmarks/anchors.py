"""ntkspec's exact kernel against neural-tangents' `empirical_ntk_fn` (implementations 1, 2, 3) and a
dense-Jacobian baseline, on identical weights and inputs, in one run on one machine.

Beside them, the arithmetic floor of the Dense rule that ntkspec and neural-tangents' implementation 3
both apply: the backward product of the N C output sensitivities through the w x w hidden weight,
Delta_1 = (Delta_2 W_2^T) * mask, and the two hidden layers' Grams Delta_1 Delta_1^T + Delta_2 Delta_2^T
(everything else is O(N C w + N^2 d) or smaller), timed as bare XLA products on random operands of
those shapes. best NT / floor bounds the speed-up any implementation of that rule could have.

neural-tangents does not import on current JAX, so it runs in its own venv
(`bash benchmarks/setup_neural_tangents.sh` makes it; never a dependency of ntkspec), in a
subprocess; ntkspec runs in this process. Usage:
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
from benchmarks._timing import best_time, machine
from benchmarks.suite import _last_error

HERE = Path(__file__).parent
CANDIDATES = ("nt_impl1", "nt_impl2", "nt_impl3", "jacobian_baseline")
JACOBIAN_BASED = ("nt_impl1", "nt_impl2", "jacobian_baseline")


def _weights(width: int, key) -> list[tuple[np.ndarray, np.ndarray]]:
    sizes = [784, width, width, 10]
    keys = jax.random.split(key, 3)
    init = jax.nn.initializers.lecun_normal()
    return [
        (np.asarray(init(k, (a, b), jnp.float32)), np.zeros(b, np.float32))
        for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def _apply(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


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

    return best_time(products, delta_2, w_2, mask, repeats=5)


def run(widths, venv: Path, n: int = 128, jacobian_max_width: int = 1024) -> dict:
    python = venv / "bin" / "python"
    x = np.asarray(jax.random.uniform(jax.random.key(0), (n, 784), jnp.float32))
    rows = []
    for width in widths:
        weights = _weights(width, jax.random.key(width))
        op = ntkspec.ntk(_apply, [tuple(map(jnp.asarray, wb)) for wb in weights], jnp.asarray(x))
        row = {"width": width, "ntkspec_structured_s": best_time(op.dense, "structured")}
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
                    row[name + "_error"] = f"exit {done.returncode}: {_last_error(done.stderr)}"
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
    return {"machine": machine(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="256,1024,4096")
    parser.add_argument("--venv", type=Path, default=HERE / ".nt-venv")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not (args.venv / "bin" / "python").exists():
        sys.exit(f"No venv at {args.venv}: run `bash benchmarks/setup_neural_tangents.sh` first.")
    result = run([int(w) for w in args.widths.split(",")], args.venv)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
