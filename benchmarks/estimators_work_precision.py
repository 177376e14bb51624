"""Work-precision of the matrix-free estimators: relative error against matvecs.

Kernels: K = U diag(i^-α) Uᵀ (Haar U; α = 0.5, 1, 2) and the empirical NTK of a ReLU MLP
64→64→64→10 on scikit-learn digits (N = n/10 samples), all with exact float64 references
(`ntkspec._testing`: `power_law`, `digits_ntk`, `exact_summary`).
Panels: tr K (Hutchinson, Hutch++, XTrace, XNysTrace); effective rank (SLQ, ratio estimator with
s = 10 steps, vs the Krylov-aware estimator with the exact trace and control variate); top-5
eigenvalues (block Lanczos, b = 10, full reorthogonalisation). RMSE over seeds (median for top-k).

    python -m benchmarks.estimators_work_precision --out benchmarks/results --n 500 --seeds 10
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import _harness as h
from ntkspec._testing import digits_ntk, exact_summary, power_law
from ntkspec.estimators import (
    entropy_from_traces,
    hutchinson,
    hutchpp,
    krylov_spectrum,
    slq,
    top_eigenpairs,
    xnystrace,
    xtrace,
)

TRACE = {"Hutchinson": hutchinson, "Hutch++": hutchpp, "XTrace": xtrace, "XNysTrace": xnystrace}


def over_seeds(fn, kernel, keys):
    """fn(kernel, key) for every key, compiled once, looped with lax.map."""
    return jax.device_get(jax.jit(lambda k, ks: jax.lax.map(lambda key: fn(k, key), ks))(kernel, keys))


def rmse(x) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def run(n: int, seeds: int, trace_budgets, entropy_budgets, topk_budgets) -> dict:
    kernels = {f"alpha={a}": power_law(a, n)[0] for a in (0.5, 1.0, 2.0)}
    kernels["digits NTK"] = digits_ntk(n // 10)
    keys = jax.random.split(jax.random.key(0), seeds)
    results = {}
    for label, kernel in kernels.items():
        ref = exact_summary(kernel)
        k = jnp.asarray(kernel)
        entry = {
            "trace": {},
            "erank": {},
            "top5": {},
            "exact": {"trace": ref["trace"], "erank": ref["erank"]},
        }
        for name, estimator in TRACE.items():
            errs = []
            for budget in trace_budgets:
                out = over_seeds(lambda a, key, e=estimator, b=budget: e(a, key, num_matvecs=b), k, keys)
                errs.append(rmse(out.value / ref["trace"] - 1))
            entry["trace"][name] = errs
        slq_errs, ka_errs = [], []
        for budget in entropy_budgets:
            out = over_seeds(lambda a, key, b=budget: slq(a, key, num_probes=b // 10, num_steps=10), k, keys)
            erank = np.exp(entropy_from_traces(out.value, out.trace))
            slq_errs.append(rmse(erank / ref["erank"] - 1))
            out = over_seeds(
                lambda a, key, b=budget, t=ref["trace"]: krylov_spectrum(a, key, trace=t, budget=b, top_k=5),
                k,
                keys,
            )
            ka_errs.append(rmse(out.effective_rank / ref["erank"] - 1))
        entry["erank"] = {"SLQ (ratio)": slq_errs, "Krylov-aware + CV": ka_errs}
        top_errs = []
        for budget in topk_budgets:
            out = over_seeds(lambda a, key, b=budget: top_eigenpairs(a, key, k=5, budget=b), k, keys)
            top_errs.append(float(np.median(np.max(np.abs(out.values / ref["eigenvalues"][:5] - 1), axis=1))))
        entry["top5"] = {"block Lanczos b=10": top_errs}
        results[label] = entry
        print(label, json.dumps({key: entry[key] for key in ("trace", "erank", "top5")}), flush=True)
    return results


def plot(results: dict, budgets: dict, path: pathlib.Path) -> None:
    rows = len(results)
    fig, axes = h.pyplot().subplots(rows, 3, figsize=(11, 2.6 * rows), squeeze=False)
    titles = {"trace": "tr K", "erank": "effective rank", "top5": "top-5 eigenvalues"}
    for r, (label, entry) in enumerate(results.items()):
        for c, panel in enumerate(("trace", "erank", "top5")):
            ax = axes[r, c]
            for name, errs in entry[panel].items():
                ax.loglog(budgets[panel], np.maximum(errs, 1e-16), marker="o", label=name)
            ax.set_title(f"{label}: {titles[panel]}", fontsize=9)
            if r == rows - 1:
                ax.set_xlabel("matvecs")
            if c == 0:
                ax.set_ylabel("relative error")
            if r == 0:
                ax.legend(fontsize=7)
    h.save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trace-budgets", type=int, nargs="+", default=[24, 48, 96, 192])
    parser.add_argument("--entropy-budgets", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--topk-budgets", type=int, nargs="+", default=[40, 80, 160])
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    start = time.perf_counter()
    results = run(args.n, args.seeds, args.trace_budgets, args.entropy_budgets, args.topk_budgets)
    budgets = {
        "trace": args.trace_budgets,
        "erank": args.entropy_budgets,
        "top5": args.topk_budgets,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "n": args.n,
        "seeds": args.seeds,
        "budgets": budgets,
        "seconds": time.perf_counter() - start,
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
    }
    h.write_json(args.out / "estimators_work_precision.json", {"meta": meta, "results": results})
    plot(results, budgets, args.out / "estimators_work_precision.png")


if __name__ == "__main__":
    main()
