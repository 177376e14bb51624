"""ntkspec's exact kernel against neural-tangents' `empirical_ntk_fn` (implementations 1, 2, 3) and a
dense-Jacobian baseline, on identical weights and inputs, in one run on one machine.

neural-tangents does not import on current JAX, so it runs in its own venv
(`bash benchmarks/setup_neural_tangents.sh` makes it; never a dependency of ntkspec), in a
subprocess; ntkspec runs in this process. Usage:
python -m benchmarks.anchors [--widths 256,1024] [--venv benchmarks/.nt-venv] [--out FILE.json]
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

HERE = Path(__file__).parent
CANDIDATES = ("nt_impl1", "nt_impl2", "nt_impl3", "jacobian_baseline")


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


def run(widths, venv: Path, n: int = 128, baseline_max_width: int = 1024) -> dict:
    python = venv / "bin" / "python"
    x = np.asarray(jax.random.uniform(jax.random.key(0), (n, 784), jnp.float32))
    rows = []
    for width in widths:
        weights = _weights(width, jax.random.key(width))
        op = ntkspec.ntk(_apply, [tuple(map(jnp.asarray, wb)) for wb in weights], jnp.asarray(x))
        row = {"width": width, "ntkspec_structured_s": best_time(op.dense, "structured")}
        ours = np.asarray(op.dense("structured"))
        with tempfile.TemporaryDirectory() as tmp:
            arrays = {"x": x} | {f"w{i}": w for i, (w, _) in enumerate(weights)}
            arrays |= {f"b{i}": b for i, (_, b) in enumerate(weights)}
            np.savez(Path(tmp) / "in.npz", **arrays)
            for name in CANDIDATES:
                if name == "jacobian_baseline" and width > baseline_max_width:
                    continue
                out = Path(tmp) / f"{name}.npy"
                done = subprocess.run(
                    [str(python), str(HERE / "_nt_worker.py"), str(Path(tmp) / "in.npz"), str(out), name],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:  # e.g. killed for memory: recorded, and the run goes on
                    tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
                    row[name + "_error"] = f"exit {done.returncode}: {tail}"
                    continue
                row |= json.loads(done.stdout.strip().splitlines()[-1])
                k = np.load(out)
                row[name + "_max_rel_diff"] = float(np.abs(k - ours).max() / np.abs(ours).max())
        timed = [row[k] for k in row if k.startswith("nt_impl") and k.endswith("_s")]
        if timed:
            row["best_nt_s"] = min(timed)
            row["speedup_vs_best_nt"] = row["best_nt_s"] / row["ntkspec_structured_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"machine": machine(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--widths", default="256,1024")
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
