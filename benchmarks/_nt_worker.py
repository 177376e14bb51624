"""Runs inside the neural-tangents venv (see setup_neural_tangents.sh); not imported by ntkspec.

Reads an .npz with the study MLP's weights (`ntkspec.models.MLP`, written by anchors.py) and inputs,
applies them by a plain function (the form neural-tangents takes; ntkspec does not import here),
times one of neural-tangents' `empirical_ntk_fn` implementations (nt_impl1, nt_impl2, nt_impl3) or a
dense-Jacobian baseline (jacrev, then J J^T), prints JSON, and saves the kernel (sample-major) for
the driver to compare. Warm-up, then best of 3 (one timed run when the warm-up took over 5 s:
implementations 1, 2 and jacrev). One candidate per process, so that one running out of memory does
not take the others with it.
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np


def main(path: str, out: str, name: str) -> None:
    data = np.load(path)
    x = jnp.asarray(data["x"])
    params = [(jnp.asarray(data[f"w{i}"]), jnp.asarray(data[f"b{i}"])) for i in range(3)]

    def f(params, x):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    if name == "jacobian_baseline":

        @jax.jit
        def fn(x, params):
            jac = jax.jacrev(lambda p: f(p, x).reshape(-1))(params)
            j = jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree_util.tree_leaves(jac)], 1)
            return j @ j.T

        call = lambda: fn(x, params)  # noqa: E731
    else:
        fn = jax.jit(nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=int(name[-1])))
        call = lambda: fn(x, None, params)  # noqa: E731
    start = time.perf_counter()
    jax.block_until_ready(call())
    warm_up = time.perf_counter() - start
    times = []
    for _ in range(3 if warm_up < 5 else 1):  # best of 3; one timed run for the slow candidates
        start = time.perf_counter()
        k = jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    k = np.asarray(k)
    if k.ndim == 4:  # (N, N, C, C) -> sample-major (N*C, N*C)
        n, _, c, _ = k.shape
        k = k.transpose(0, 2, 1, 3).reshape(n * c, n * c)
    np.save(out, k)
    print(json.dumps({"jax": jax.__version__, "neural_tangents": nt.__version__, name + "_s": min(times)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
