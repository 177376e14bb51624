"""Infinite-width kernel regression (NNGP and NTK of the study's ReLU MLP) on MNIST with 1,000
training samples, next to the published NNGP accuracy.

Data: MNIST t10k (`ntkspec.data.load("mnist", DIR)`, pixels in [0, 1], flattened), permuted by a
fixed key: the first 1,000 samples train, the next 1,000 choose the ridge (validation), the other
8,000 test. Targets are one-hot minus 0.1 (zero-mean, as Lee et al. 2018). Kernels:
`ntkspec.infinite.mlp_nngp` and `mlp_ntk` for L = 2..5 Dense layers, the NTK width-aware with hidden
widths `--width` (LeCun-normal weights, σ_w² = 1, zero biases: no hyperparameters are tuned besides
the ridge). Fit: `ntkspec.regression.fit` (Cholesky, float64) with λ = ρ · mean diag K for ρ on a
grid; the ρ of best validation accuracy is kept and its test accuracy reported.

Published figure (Lee, Bahri, Novak, Schoenholz, Pennington & Sohl-Dickstein, "Deep neural networks
as Gaussian processes", ICLR 2018, Table 1, MNIST:1k): ReLU NNGP 92.8 % test accuracy, with depth,
weight and bias variances tuned on validation data and the full 10k MNIST test set.

Usage: python -m benchmarks.kernel_regression_mnist [--data-dir DIR] [--width 2048] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "kernel_regression_mnist.json"
PUBLISHED = {
    "source": "Lee et al. 2018, Table 1, MNIST:1k, ReLU NNGP (tuned depth, σ_w², σ_b²)",
    "accuracy": 0.928,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kernel_regression_mnist", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with mnist/")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-validation", type=int, default=1000)
    parser.add_argument("--width", type=int, default=2048, help="hidden width of the width-aware NTK")
    parser.add_argument("--depths", default="2,3,4,5", help="numbers of Dense layers L")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from ntkspec import data, infinite, regression
    from ntkspec.experiments.config import SweepConfig

    start = time.perf_counter()
    dataset = data.load("mnist", args.data_dir)
    order = np.asarray(jax.random.permutation(jax.random.key(0), dataset.x_train.shape[0]))
    x = jnp.asarray(dataset.x_train.reshape(len(order), -1)[order], jnp.float64)
    labels = dataset.y_train[order]
    a, b = args.n_train, args.n_train + args.n_validation
    parts = {"train": slice(0, a), "validation": slice(a, b), "test": slice(b, None)}
    y = jax.nn.one_hot(labels[parts["train"]], 10, dtype=jnp.float64) - 0.1

    rows = []
    for depth in map(int, args.depths.split(",")):
        widths = (784,) + (args.width,) * (depth - 1)
        for name, kernel in (("nngp", infinite.mlp_nngp), ("ntk", infinite.mlp_ntk)):
            train = kernel(x[parts["train"]], None, widths)
            cross = {
                part: kernel(x[parts[part]], x[parts["train"]], widths) for part in ("validation", "test")
            }
            mean = float(jnp.mean(jnp.diagonal(train)))
            scores = []
            for rho in SweepConfig.kernel_ridges:  # the sweeps' grid
                fitted = regression.fit(train, y, ridge=rho * mean)
                accuracy = {
                    part: float(np.mean(np.asarray(jnp.argmax(fitted.predict(k), 1)) == labels[parts[part]]))
                    for part, k in cross.items()
                }
                scores.append((accuracy["validation"], rho, accuracy["test"], fitted.residual))
            validation, rho, test, residual = max(scores)
            row = {
                "kernel": name,
                "depth": depth,
                "widths": list(widths),
                "ridge_over_mean_diagonal": rho,
                "validation_accuracy": validation,
                "test_accuracy": test,
                "relative_residual": residual,
                "grid": [
                    {"ridge_over_mean_diagonal": r, "validation": v, "test": t} for v, r, t, _ in scores
                ],
            }
            print(json.dumps({k: v for k, v in row.items() if k != "grid"}), flush=True)
            rows.append(row)
    result = {
        "benchmark": "kernel_regression_mnist",
        "n_train": args.n_train,
        "n_validation": args.n_validation,
        "n_test": int(x.shape[0] - b),
        "published": PUBLISHED,
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
        "date": time.strftime("%Y-%m-%d"),
        "jax": jax.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
