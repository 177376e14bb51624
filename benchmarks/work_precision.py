"""Suite section "work-precision": estimator error against matvecs, on synthetic and real NTKs.

`benchmarks.estimators_work_precision` (synthetic power laws and a digits NTK: error of the trace,
effective-rank and top-5 estimators against matvecs), and real NTKs at initialisation and after
full-batch Adam training (`ntkspec`'s trainer), raw and cosine kernels: an MLP on scikit-learn
digits, and (full scale, when `data_dir` holds `mnist/`) the study's 784 -> 256 -> 256 -> 10 MLP on
100 MNIST training samples with its NTK on 128 held-out ones. For these, the relative error of the
stochastic spectrum's effective rank against the exact float64 one over seeds and budgets, and the
coverage of its error interval: the fraction of seeds with |H_est - H| <= 2 stderr + bias bound
(H the entropy, erank = exp H). Every part runs in a fresh float64 process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ntkspec
from benchmarks import _harness as h
from ntkspec import data
from ntkspec.models import build


def synthetic_task(task: dict) -> dict:
    """The synthetic and digits work-precision panels (float64), and their figure."""
    from benchmarks import estimators_work_precision as wp

    start = time.perf_counter()
    results = wp.run(task["n"], task["seeds"], task["trace"], task["erank"], task["topk"])
    budgets = {"trace": task["trace"], "erank": task["erank"], "top5": task["topk"]}
    wp.plot(results, budgets, Path(task["out"]) / "estimators_work_precision.png")
    meta = {
        "n": task["n"],
        "seeds": task["seeds"],
        "budgets": budgets,
        "seconds": time.perf_counter() - start,
    }
    return {"meta": meta, "results": results}


def trained(model, split: data.Split, steps: int, lr: float = 1e-3):
    """`steps` full-batch Adam steps (cross-entropy) by ntkspec's trainer: (trained model, train acc.).

    The benchmarks' one use of the trainer; the spectra it records at the last step go unused."""
    from ntkspec.experiments import measure, train  # the one use of the trainer in benchmarks/

    records = []
    optimizer = train.make_optimizer("adam", lr)
    recorder = measure.Measure(split, jax.random.key(0))
    result = train.train(model, split, optimizer, [steps], recorder, recorder=records.append)
    if result.status != "complete":
        raise RuntimeError(result.message)
    return result.model, records[-1].train_accuracy


def _digits(n_train: int, n_ntk: int) -> data.Split:
    """The first n_train digits to train on, the next n_ntk for the NTK, the rest to test (float64)."""
    digits = data.load("digits")
    x = digits.x_train.reshape(digits.x_train.shape[0], -1).astype(np.float64)
    y = digits.y_train
    train, held = slice(0, n_train), slice(n_train, n_train + n_ntk)
    rest = slice(n_train + n_ntk, None)
    return data.Split(x[train], y[train], x[held], y[held], x[rest], y[rest], digits.classes)


def _mnist(n_train: int, n_ntk: int, data_dir: str) -> data.Split:
    return data.split(data.load("mnist", data_dir), n_train, n_ntk, jax.random.key(0), dtype=np.float64)


def real_ntk_task(task: dict) -> dict:
    """Stochastic against exact float64 spectra of an MLP's NTK (digits or MNIST), init and trained."""
    if task["dataset"] == "mnist":
        split = _mnist(task["n_train"], task["n_ntk"], task["data_dir"])
    else:
        split = _digits(task["n_train"], task["n_ntk"])
    x_ntk = jnp.asarray(split.x_ntk)
    width = task.get("width", 64)
    model = build(
        "mlp", x_ntk.shape[1:], 10, jax.random.key(0), width=width, depth=3, param_dtype=jnp.float64
    )
    rows = []
    for state in ("init", "trained"):
        accuracy = None
        if state == "trained":
            model, accuracy = trained(model, split, task["steps"])
        op = ntkspec.ntk(model, x_ntk)
        exact = dict(zip(("raw", "cosine"), ntkspec.spectra(op, "exact"), strict=True))
        for budget in task["budgets"]:
            runs = [
                ntkspec.spectra(op, "stochastic", key=jax.random.key(seed), budget=budget)
                for seed in range(task["seeds"])
            ]
            for i, kind in enumerate(("raw", "cosine")):
                ref = exact[kind]
                est = [r[i] for r in runs]
                errors = np.array([s.effective_rank / ref.effective_rank - 1 for s in est])
                covered = [
                    abs(s.entropy - ref.entropy) <= 2 * s.entropy_stderr + s.entropy_bias_bound for s in est
                ]
                rows.append(
                    {
                        "state": state,
                        "kernel": kind,
                        "budget": budget,
                        "rows": op.shape[0],
                        "train_accuracy": accuracy,
                        "exact_effective_rank": ref.effective_rank,
                        "rmse_rel_error": float(np.sqrt(np.mean(errors**2))),
                        "max_abs_rel_error": float(np.abs(errors).max()),
                        "mean_rel_stderr": float(
                            np.mean([s.effective_rank_stderr for s in est]) / ref.effective_rank
                        ),
                        "coverage": float(np.mean(covered)),
                        "seeds": task["seeds"],
                        # median: seed 0 compiles
                        "seconds_per_spectrum": float(np.median([s.seconds for s in est])),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows, "settings": task | {"inputs": int(x_ntk.shape[1]), "width": width}}


def section(cfg: dict, out: Path, data_dir: Path | None) -> dict:
    """The section at the scale `cfg` (`suite.SCALES[...]`): synthetic panels, digits, MNIST."""
    wp = h.spawn_task({"kind": "work-precision", "x64": True, "out": str(out), **cfg["wp"]})
    h.log(f"work-precision: synthetic panels done ({wp.get('meta', wp)})")
    real = {"digits": h.spawn_task({"kind": "real-ntk", "x64": True, "dataset": "digits", **cfg["real"]})}
    h.log("work-precision: digits NTKs done")
    if cfg["mnist"] is not None and (data_dir is None or not (data_dir / "mnist").is_dir()):
        real["mnist"] = {"skipped": f"no mnist/ in --data-dir ({data_dir})"}
    elif cfg["mnist"] is not None:
        task = {"kind": "real-ntk", "x64": True, "dataset": "mnist", "data_dir": str(data_dir)}
        real["mnist"] = h.spawn_task(task | cfg["mnist"])
        h.log("work-precision: MNIST NTKs done")
    return {"estimators": wp, "real_ntk": real}


def render(result: dict, out: Path) -> dict:
    """Draw `real_ntk_erank.png` where real NTKs were measured (the synthetic figure is the worker's)."""
    real = result.get("real_ntk", {})
    if any("rows" in block for block in real.values()):
        _plot_real(real, out / "real_ntk_erank.png")
    return result


def _plot_real(real: dict, path: Path) -> None:
    """RMS relative error of the effective rank against matvecs: one panel per dataset."""
    plt = h.pyplot()
    blocks = {name: block["rows"] for name, block in real.items() if "rows" in block}
    fig, axes = plt.subplots(1, len(blocks), figsize=(5 * len(blocks), 3.4), squeeze=False)
    for ax, (dataset, rows) in zip(axes[0], blocks.items(), strict=True):
        for state in ("init", "trained"):
            for kind in ("raw", "cosine"):
                pts = [r for r in rows if r["state"] == state and r["kernel"] == kind]
                ax.loglog(
                    [r["budget"] for r in pts],
                    [max(r["rmse_rel_error"], 1e-16) for r in pts],
                    marker="o" if kind == "raw" else "s",
                    ls="-" if state == "init" else "--",
                    label=f"{state}, {kind}",
                )
        ax.set(xlabel="matvecs", ylabel="RMS relative error", title=f"{dataset} MLP NTK: effective rank")
        ax.legend(fontsize=7)
    h.save_figure(fig, path)


def summary(r: dict) -> list[str]:
    """The section's part of summary.md."""
    lines = ["## Work-precision", ""]
    est = r["estimators"]
    if "results" in est:
        meta = est["meta"]
        budgets = meta["budgets"]
        lines += [
            f"Synthetic power-law kernels and a digits NTK, n = {meta['n']}, {meta['seeds']} seeds, float64 "
            "(`benchmarks/estimators_work_precision.py`): relative error (RMSE; median of the max over the "
            f"top 5 for top-5) at the largest budget (trace {budgets['trace'][-1]}, erank "
            f"{budgets['erank'][-1]}, top-5 {budgets['top5'][-1]} matvecs). "
            "![work-precision](estimators_work_precision.png)",
            "",
        ]
        rows = []
        for label, entry in est["results"].items():
            name, errs = min(entry["trace"].items(), key=lambda kv: kv[1][-1])
            erank = entry["erank"]
            rows.append(
                [
                    label,
                    f"{name} {errs[-1]:.1e}",
                    f"{erank['SLQ (ratio)'][-1]:.1e}",
                    f"{erank['Krylov-aware + CV'][-1]:.1e}",
                    f"{entry['top5']['block Lanczos b=10'][-1]:.1e}",
                ]
            )
        header = ["kernel", "tr K (best estimator)", "erank SLQ", "erank Krylov-aware + CV", "top-5"]
        lines += h.table(header, rows, right_from=2) + [""]
    else:
        lines += [f"Synthetic panels failed: {est.get('error')}", ""]
    for dataset, real in r["real_ntk"].items():
        lines += _summary_real(dataset, real)
    return lines


def _summary_real(dataset: str, real: dict) -> list[str]:
    if "rows" not in real:
        return [f"Real NTKs ({dataset}): {real.get('skipped') or 'failed: ' + str(real.get('error'))}", ""]
    s = real["settings"]
    size = s["n_ntk"] * 10
    lines = [
        f"Real NTKs, {dataset}: MLP {s['inputs']} → {s['width']} → {s['width']} → 10 (`ntkspec.models.MLP`, "
        f"float64) on {s['n_ntk']} held-out samples (K is {size} × {size}), at init and after {s['steps']} "
        f"full-batch Adam steps (lr 1e-3) on {s['n_train']} training samples; "
        '`spectra(op, "stochastic", budget=B)` against `spectra(op, "exact")`, '
        f"{s['seeds']} seeds. Coverage: fraction of seeds with |H_est − H| ≤ 2·stderr + bias bound "
        "(H the entropy). ![real NTK](real_ntk_erank.png)",
        "",
    ]
    rows = []
    for row in real["rows"]:
        accuracy = row["train_accuracy"]
        state = row["state"] + ("" if accuracy is None else f" (train acc. {accuracy:.2f})")
        rows.append(
            [
                state,
                row["kernel"],
                str(row["budget"]),
                f"{row['exact_effective_rank']:.2f}",
                f"{row['rmse_rel_error']:.1e}",
                f"{row['max_abs_rel_error']:.1e}",
                f"{row['mean_rel_stderr']:.1e}",
                f"{row['coverage']:.2f}",
                h.fmt_s(row["seconds_per_spectrum"]),
            ]
        )
    header = ["state", "kernel", "B", "exact erank", "RMS rel. error", "max rel. error"]
    header += ["mean rel. stderr", "coverage", "time / spectrum"]
    return lines + h.table(header, rows, right_from=2) + [""]
