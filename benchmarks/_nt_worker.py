"""Runs inside the neural-tangents venv (see setup_neural_tangents.sh); not imported by ntkspec.

Reads an .npz with the MLP's weights and inputs, times neural-tangents' `empirical_ntk_fn` in its
three implementations and a dense-Jacobian baseline (jacrev, then J J^T), prints JSON, and saves the
kernels (sample-major) for the driver to compare.
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np


def main(path: str, out: str, skip: str) -> None:
    data = np.load(path)
    x = jnp.asarray(data["x"])
    params = [(jnp.asarray(data[f"w{i}"]), jnp.asarray(data[f"b{i}"])) for i in range(3)]

    def f(params, x):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    def jacobian_baseline(x, params):
        jac = jax.jacrev(lambda p: f(p, x).reshape(-1))(params)
        j = jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree_util.tree_leaves(jac)], 1)
        return j @ j.T

    results, kernels = {"jax": jax.__version__, "neural_tangents": nt.__version__}, {}
    candidates = {
        f"nt_impl{i}": jax.jit(nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=i))
        for i in (1, 2, 3)
    }
    candidates["jacobian_baseline"] = jax.jit(jacobian_baseline)
    for name, fn in candidates.items():
        if name in skip.split(","):
            continue
        try:
            k = jax.block_until_ready(fn(x, None, params) if name.startswith("nt") else fn(x, params))
            start = time.perf_counter()
            k = jax.block_until_ready(fn(x, None, params) if name.startswith("nt") else fn(x, params))
            results[name + "_s"] = time.perf_counter() - start
            k = np.asarray(k)
            if k.ndim == 4:  # (N, N, C, C) -> sample-major (N*C, N*C)
                n, _, c, _ = k.shape
                k = k.transpose(0, 2, 1, 3).reshape(n * c, n * c)
            kernels[name] = k
        except Exception as error:  # noqa: BLE001 - reported, e.g. out of memory at large width
            results[name + "_error"] = f"{type(error).__name__}: {str(error)[:200]}"
    np.savez(out, **kernels)
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:4])
