"""The primal Gram JᵀJ of kernel regression: `ntkspec.exact.parameter_gram` (per-layer factors)
against the Jacobian product (J by `jax.jacrev` in chunks of samples, JᵀJ summed in float64).

The network is the data-scaling sweep's (`mnist-kernel-scaling`: 4 Dense layers of width 8 on MNIST,
P = 6,514, C = 10) at initialisation, on its n training samples; n·C > P, so the against-kernels
regression solves in the primal. The factored Gram needs N Σ d_l n_l n_m d_m multiply-adds against
N C (Σ d_l n_l)² for the product: C = 10 times fewer, about 18 with the symmetry of the first layer's
block. The two variants alternate, `--repeats` times each, and the ratio of their best times is
reported (the machine is shared), with the largest relative difference of the two Grams.

Usage: nice -n 10 python -m benchmarks.parameter_gram [--data-dir DIR] [--sizes 1000,2000,4000,7800]
    [--repeats 2] [--out benchmarks/results/parameter_gram.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "parameter_gram.json"
#: Jacobian entries per chunk of samples of the baseline (float32: 128 MiB).
CHUNK_ENTRIES = 2**25


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parameter_gram", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with mnist/")
    parser.add_argument("--sizes", default="1000,2000,4000,7800")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import jax.numpy as jnp
    import numpy as np

    import ntkspec
    from benchmarks._harness import machine, write_json
    from ntkspec import exact
    from ntkspec.experiments.against_kernels import targets
    from ntkspec.experiments.config import load_config, run_model, run_split, runs
    from ntkspec.model import adapt

    sizes = tuple(int(n) for n in args.sizes.split(","))
    config = load_config("mnist-kernel-scaling", data_sizes=sizes, pretrained_samples=min(sizes))
    dataset = ntkspec.data.load("mnist", args.data_dir)
    variants = {"factored": exact.parameter_gram, "product": _jacobian_product}
    rows = []
    for run in (r for r in runs(config) if r.seed == 0):
        split = run_split(config, run, dataset)
        apply, params, state, _ = adapt(run_model(config, run, split), (split.x_train[:1],))
        problem = (
            apply,
            params,
            state,
            jnp.asarray(split.x_train),
            targets(split.y_train, split.num_classes),
        )
        seconds, grams = {name: [] for name in variants}, {}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                tick = time.perf_counter()
                grams[name] = fn(*problem, 256)[0]
                seconds[name].append(time.perf_counter() - tick)
        difference = np.max(np.abs(grams["factored"] - grams["product"])) / np.max(np.abs(grams["product"]))
        row = {
            "n_train": run.n_train,
            "rows": run.n_train * split.num_classes,
            "parameters": grams["product"].shape[0],
            "seconds": seconds,
            "ratio": min(seconds["product"]) / min(seconds["factored"]),
            "difference": float(difference),
        }
        print(row, flush=True)
        rows.append(row)
    result = {"benchmark": "parameter_gram", "config": config.name, "rows": rows, "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(args.out)


def _jacobian_product(apply, params, state, x, y, chunk: int):
    """(JᵀJ, Jᵀ y) with J (chunks of samples, N·C rows) by `jax.jacrev`, summed in float64."""
    import jax
    import numpy as np
    from jax.flatten_util import ravel_pytree

    p = ravel_pytree(params)[0].size
    jacobian = jax.jit(lambda q, x: jax.jacrev(lambda w: apply(w, state, x).reshape(-1))(q))
    gram, rhs = np.zeros((p, p)), np.zeros(p)
    step = max(1, CHUNK_ENTRIES // (y.shape[1] * p))
    for i in range(0, x.shape[0], step):
        leaves = jax.tree.leaves(jacobian(params, x[i : i + step]))
        j = np.concatenate([np.asarray(a, np.float64).reshape(a.shape[0], -1) for a in leaves], axis=1)
        gram += j.T @ j
        rhs += j.T @ np.asarray(y[i : i + step]).reshape(-1)
    return gram, rhs


if __name__ == "__main__":
    main()
