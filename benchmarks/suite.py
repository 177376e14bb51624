"""The benchmark suite: work-precision, width, kernel size and neural-tangents anchors in one run.

`python -m benchmarks run [--quick] [--out DIR] [--only SECTION,...]` (see `benchmarks/__main__.py`)
writes one JSON per section to DIR (default `benchmarks/results/suite` or `.../suite-quick`), the
figures as PNG and `DIR/summary.md`. Sections:

work-precision
    `benchmarks.estimators_work_precision` (synthetic power laws and a digits NTK: error of the trace,
    effective-rank and top-5 estimators against matvecs), and real NTKs at initialisation and after
    full-batch Adam training, raw and cosine kernels: an MLP on scikit-learn digits, and (full scale,
    when `data_dir` holds `mnist/`, e.g. ../shared/data) the study's 784 -> 256 -> 256 -> 10 MLP on
    100 MNIST training samples with its NTK on 128 held-out ones. For these, the relative error of the
    stochastic spectrum's effective rank against the exact float64 one over seeds and budgets, and the
    coverage of its error interval: the fraction of seeds with |H_est - H| <= 2 stderr + bias bound
    (H the entropy, erank = exp H).
width
    3-layer ReLU MLP 784 -> w -> w -> 10 (`dense_kernel._MLP`), N = 128 inputs (K is 1280 x 1280):
    exact through the structured kernel, exact through the generic Jacobian contraction (up to
    w = 1024), and the stochastic spectrum at its default budget (up to w = 4096), timed, with peak
    memory, the error against the exact spectrum and the crossover width, if any.
kernel-size
    the same MLP at a fixed small width, N C from 10^3 to 10^5 rows: one matvec block and the
    stochastic spectrum (matrix-free), timed, with peak memory and its log-log slope in N C; beside
    them the exact spectrum while K is small enough, for the error and the crossover in N C.
anchors
    `benchmarks.anchors.run` in a neural-tangents venv (reused from `results/anchors.json` unless
    asked to rerun; skipped in quick runs).

Every measurement of the width and kernel-size sections runs in a fresh subprocess: its programs are
compiled ahead of time (`jit(...).lower(...).compile()`, not timed), then the first run is timed
(blocked until ready) while the peak resident set is measured (`device_scaling._rss_rise`: VmHWM reset
through /proc/self/clear_refs, minus VmRSS before, with glibc's mmap threshold at 64 KiB so freed
buffers leave the resident set), plus the bytes of the arguments already resident; cheap runs are
repeated and the best time kept. XLA's own figure for the compiled programs
(`Compiled.memory_analysis()`: arguments + outputs + temporaries; SciPy's `eigvalsh` is outside it)
is recorded beside it. Workers run SciPy's BLAS on one thread (see `_spawn`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SECTIONS = ("work-precision", "width", "kernel-size", "anchors")
NT_VENV = HERE / ".nt-venv"
DATA_DIR = HERE.parent.parent / "shared" / "data"  # the project's shared data, next to the checkout

# Sizes per scale. "smoke" is the test's: seconds, not a benchmark.
SCALES = {
    "smoke": {
        "wp": {"n": 100, "seeds": 2, "trace": [24], "erank": [50], "topk": [40]},
        "real": {"n_ntk": 10, "n_train": 50, "steps": 5, "seeds": 2, "budgets": [50]},
        "mnist": None,
        "width": {"widths": [16], "n": 8, "jacobian_max": 16, "stochastic_max": 16, "budget": 50},
        "kernel": {"width": 16, "ns": [10, 20], "budget": 50, "exact_max_rows": 200},
    },
    "quick": {
        "wp": {"n": 200, "seeds": 2, "trace": [24, 96], "erank": [100, 200], "topk": [40, 80]},
        "real": {"n_ntk": 50, "n_train": 500, "steps": 50, "seeds": 2, "budgets": [100, 200]},
        "mnist": None,  # quick runs need nothing outside the repository
        "width": {
            "widths": [64, 256],
            "n": 128,
            "jacobian_max": 1024,
            "stochastic_max": 4096,
            "budget": None,
        },
        "kernel": {"width": 64, "ns": [100, 1000], "budget": 200, "exact_max_rows": 3000},
    },
    "full": {
        "wp": {
            "n": 500,
            "seeds": 10,
            "trace": [24, 48, 96, 192],
            "erank": [100, 200, 400],
            "topk": [40, 80, 160],
        },
        "real": {"n_ntk": 100, "n_train": 1000, "steps": 200, "seeds": 10, "budgets": [100, 200, 400]},
        "mnist": {
            "width": 256,
            "n_ntk": 128,
            "n_train": 100,
            "steps": 200,
            "seeds": 10,
            "budgets": [100, 200, 400],
        },
        "width": {
            "widths": [64, 256, 1024, 4096, 16384],
            "n": 128,
            "jacobian_max": 1024,
            "stochastic_max": 4096,
            "budget": None,
        },
        "kernel": {"width": 64, "ns": [100, 300, 1000, 3000, 10000], "budget": 200, "exact_max_rows": 10000},
    },
}


# --------------------------------------------------------------------------------------------
# Workers: one measurement each, in a fresh process.


def _timed_run(fn, repeats: int):
    """Best seconds of `repeats` blocked calls of fn() and the process's peak bytes during the first."""
    import jax

    from benchmarks.device_scaling import _rss_rise

    times, outs = [], []

    def once():
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
        outs.append(out)
        return out

    rise = _rss_rise(once)
    for _ in range(repeats - 1):
        outs.clear()
        once()
    return min(times), rise, outs[-1]


def _xla_bytes(*compiled) -> int:
    from benchmarks.device_scaling import _xla_peak

    return int(sum(_xla_peak(c) for c in compiled))


def _operator(width: int, n: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import ntkspec
    from benchmarks.dense_kernel import _MLP

    x = jax.random.uniform(jax.random.key(0), (n, 784), jnp.float32)
    return ntkspec.ntk(_MLP(width, nnx.Rngs(1)), x)


def _exact_spectrum(op, path: str, repeats: int) -> dict:
    """`spectrum(op, "exact")` with K from `path`: compiled `dense()`, then `eigvalsh`."""
    import jax.numpy as jnp

    from benchmarks.device_scaling import _argument_bytes
    from ntkspec.operator import _dense
    from ntkspec.spectrum import eigvalsh, entropy_from_eigenvalues

    start = time.perf_counter()
    dense = _dense.lower(op, path).compile()
    compile_s = time.perf_counter() - start

    def run():
        kernel = dense(op)
        return kernel, eigvalsh(kernel)

    seconds, rise, (kernel, eigenvalues) = _timed_run(run, repeats)
    erank = float(np.exp(entropy_from_eigenvalues(jnp.asarray(eigenvalues))))
    return {
        "seconds": seconds,
        "compile_s": compile_s,
        "peak_bytes": rise + _argument_bytes(op),
        "xla_bytes": _xla_bytes(dense),
        "effective_rank": erank,
        "kernel": kernel,
    }


def _stochastic_spectrum(op, budget: int, repeats: int, key_seed: int = 0) -> dict:
    """`spectrum(op, "stochastic")`: exact diagonal for the trace, then the Krylov-aware estimator."""
    import jax
    import jax.numpy as jnp

    from benchmarks.device_scaling import _argument_bytes
    from ntkspec.operator import _diagonal
    from ntkspec.spectrum import DEFAULT_TOP_K, _krylov_spectrum_jit

    key = jax.random.key(key_seed)
    start = time.perf_counter()
    diagonal = _diagonal.lower(op).compile()
    trace = jnp.sum(diagonal(op).astype(jnp.float32))
    estimator = _krylov_spectrum_jit.lower(op, key, trace=trace, budget=budget, top_k=DEFAULT_TOP_K).compile()
    compile_s = time.perf_counter() - start

    def run():
        return estimator(op, key, trace=jnp.sum(diagonal(op).astype(jnp.float32)))

    seconds, rise, result = _timed_run(run, repeats)
    return {
        "seconds": seconds,
        "compile_s": compile_s,
        "peak_bytes": rise + _argument_bytes(op, key),
        "xla_bytes": _xla_bytes(diagonal, estimator),
        "effective_rank": float(result.effective_rank),
        "effective_rank_stderr": float(result.effective_rank_stderr),
        "matvecs": int(result.matvecs),
    }


def _width_task(task: dict) -> dict:
    """One (method, width) point of the width section."""
    import jax

    from ntkspec.spectrum import DEFAULT_BUDGET

    width, n, method = task["width"], task["n"], task["method"]
    op = _operator(width, n)
    params = sum(leaf.size for leaf in jax.tree.leaves(op.params))
    row = {"method": method, "width": width, "n": n, "rows": op.shape[0], "params": int(params)}
    # Best of 3 where a run is cheap; one run (after compilation) for the Jacobian path beyond
    # w = 256 (80 s at w = 1024) and for the stochastic spectrum of the widest networks.
    limit = {"structured": float("inf"), "jacobian": 500_000, "stochastic": 2_000_000}[method]
    repeats = 3 if params < limit else 1
    if method == "stochastic":
        budget = task["budget"] or DEFAULT_BUDGET
        row |= _stochastic_spectrum(op, budget, repeats) | {"budget": budget}
        reference = _exact_spectrum(op, "structured", 1)["effective_rank"]
    else:
        out = _exact_spectrum(op, method, repeats)
        kernel = np.asarray(out.pop("kernel"))
        row |= out
        if method == "jacobian":
            k_s = np.asarray(_exact_spectrum(op, "structured", 1)["kernel"])
            row["max_rel_diff_vs_structured"] = float(np.abs(kernel - k_s).max() / np.abs(k_s).max())
        reference = out["effective_rank"] if method == "structured" else None
    if reference is not None:
        row["exact_effective_rank"] = reference
        row["erank_rel_error"] = row["effective_rank"] / reference - 1
    row["repeats"] = repeats
    return row


def _kernel_task(task: dict) -> dict:
    """One (method, N) point of the kernel-size section: matrix-free only."""
    import jax
    import jax.numpy as jnp

    from benchmarks.device_scaling import _argument_bytes
    from ntkspec import memory
    from ntkspec.operator import _matmat

    width, n, method = task["width"], task["n"], task["method"]
    op = _operator(width, n)
    rows = op.shape[0]
    row = {"method": method, "width": width, "n": n, "rows": rows, "dense_kernel_bytes": rows * rows * 4}
    repeats = 3 if rows <= 10_000 else 1
    if method == "matvec":
        v = jax.random.normal(jax.random.key(2), (rows, op.probe_block), jnp.float32)
        start = time.perf_counter()
        matmat = _matmat.lower(op, v).compile()
        row["compile_s"] = time.perf_counter() - start
        seconds, rise, _ = _timed_run(lambda: matmat(op, v), repeats)
        row |= {
            "seconds": seconds,
            "peak_bytes": rise + _argument_bytes(op, v),
            "xla_bytes": _xla_bytes(matmat),
            "probes": op.probe_block,
            "model_bytes": memory.matvec_bytes(
                width, n, probe_block=op.probe_block, chunk_size=op.chunk_size
            ),
        }
    else:
        row |= _stochastic_spectrum(op, task["budget"], repeats) | {"budget": task["budget"]}
        if rows <= task["exact_max_rows"]:  # the exact spectrum, for the error and the crossover
            exact = _exact_spectrum(op, "structured", 1)
            row["exact_effective_rank"] = exact["effective_rank"]
            row["erank_rel_error"] = row["effective_rank"] / exact["effective_rank"] - 1
            row["exact_seconds"], row["exact_peak_bytes"] = exact["seconds"], exact["peak_bytes"]
    row["repeats"] = repeats
    return row


def _work_precision_task(task: dict) -> dict:
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


def _digits(n_train: int, n_ntk: int):
    import jax.numpy as jnp
    from sklearn.datasets import load_digits

    data = load_digits()
    x, y = jnp.asarray(data.data / 16.0, jnp.float64), jnp.asarray(data.target)
    return (x[:n_train], y[:n_train]), x[n_train : n_train + n_ntk]


def _train(model, x, y, steps: int, lr: float = 1e-3) -> float:
    """`steps` full-batch Adam steps on the cross-entropy (in place); returns the train accuracy."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adam(lr)

    def loss(p):
        logits = nnx.merge(graphdef, p)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def step(carry, _):
        p, state = carry
        updates, state = optimizer.update(jax.grad(loss)(p), state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    nnx.update(model, params)
    return float(jnp.mean(jnp.argmax(model(x), axis=1) == y))


def _mnist(n_train: int, n_ntk: int, data_dir: str):
    import jax
    import jax.numpy as jnp

    from ntkspec import data

    part = data.split(data.load("mnist", data_dir), n_train, n_ntk, jax.random.key(0), dtype=np.float64)
    return (jnp.asarray(part.x_train), jnp.asarray(part.y_train)), jnp.asarray(part.x_ntk)


def _real_ntk_task(task: dict) -> dict:
    """Stochastic against exact float64 spectra of an MLP's NTK (digits or MNIST), init and trained."""
    import jax
    import jax.numpy as jnp

    import ntkspec
    from ntkspec.models import build
    from ntkspec.spectrum import spectra

    if task["dataset"] == "mnist":
        (x_train, y_train), x_ntk = _mnist(task["n_train"], task["n_ntk"], task["data_dir"])
    else:
        (x_train, y_train), x_ntk = _digits(task["n_train"], task["n_ntk"])
    width = task.get("width", 64)
    model = build(
        "mlp", x_ntk.shape[1:], 10, jax.random.key(0), width=width, depth=3, param_dtype=jnp.float64
    )
    rows = []
    for state in ("init", "trained"):
        accuracy = None
        if state == "trained":
            accuracy = _train(model, x_train, y_train, task["steps"])
        op = ntkspec.ntk(model, x_ntk)
        exact = dict(zip(("raw", "cosine"), spectra(op, "exact"), strict=True))
        for budget in task["budgets"]:
            runs = [
                spectra(op, "stochastic", key=jax.random.key(seed), budget=budget)
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
                        "seconds_per_spectrum": float(
                            np.median([s.seconds for s in est])
                        ),  # median: seed 0 compiles
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows, "settings": task | {"inputs": int(x_ntk.shape[1]), "width": width}}


TASKS = {
    "width": _width_task,
    "kernel-size": _kernel_task,
    "work-precision": _work_precision_task,
    "real-ntk": _real_ntk_task,
}


def worker(task_json: str) -> None:
    """Entry point of a measurement subprocess: run one task, print its JSON as the last line."""
    import jax

    task = json.loads(task_json)
    if task.get("x64"):
        jax.config.update("jax_enable_x64", True)
    print(json.dumps(TASKS[task["kind"]](task)), flush=True)


def _spawn(task: dict, timeout: float | None = None) -> dict:
    """Run one task in a fresh process on one CPU device; failures come back as {"error": ...}."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", MALLOC_MMAP_THRESHOLD_="65536")
    # SciPy's eigvalsh single-threaded: on a shared, oversubscribed CPU, OpenBLAS threads spinning
    # against other jobs made a 1280-row eigvalsh take 0.3-14 s instead of 0.07-0.16 s.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("JAX_ENABLE_X64", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks", "_worker", json.dumps(task)],
            env=env,
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:  # e.g. killed for memory: recorded, and the suite goes on
        return {"error": f"exit {done.returncode}: {_last_error(done.stderr)}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _last_error(stderr: str) -> str:
    """The exception line of a worker's traceback (JAX appends a note after it), else the last line."""
    lines = stderr.strip().splitlines() or [""]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return (errors or lines)[-1][:300]


# --------------------------------------------------------------------------------------------
# Sections: run the workers, write JSON and figures.


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def section_work_precision(cfg: dict, out: Path, data_dir: Path | None) -> dict:
    wp = _spawn({"kind": "work-precision", "x64": True, "out": str(out), **cfg["wp"]})
    _log(f"work-precision: synthetic panels done ({wp.get('meta', wp)})")
    real = {"digits": _spawn({"kind": "real-ntk", "x64": True, "dataset": "digits", **cfg["real"]})}
    _log("work-precision: digits NTKs done")
    if cfg["mnist"] is not None and (data_dir is None or not (data_dir / "mnist").is_dir()):
        real["mnist"] = {"skipped": f"no mnist/ in --data-dir ({data_dir})"}
    elif cfg["mnist"] is not None:
        task = {"kind": "real-ntk", "x64": True, "dataset": "mnist", "data_dir": str(data_dir)}
        real["mnist"] = _spawn(task | cfg["mnist"])
        _log("work-precision: MNIST NTKs done")
    return {"estimators": wp, "real_ntk": real}


def section_width(cfg: dict) -> dict:
    c = cfg["width"]
    rows = []
    for width in c["widths"]:
        for method in ("structured", "jacobian", "stochastic"):
            base = {"method": method, "width": width, "n": c["n"]}
            if method == "jacobian" and width > c["jacobian_max"]:
                rows.append(base | {"skipped": f"w > {c['jacobian_max']}: its (N C)^2 P work grows as w^2"})
                continue
            if method == "stochastic" and width > c["stochastic_max"]:
                rows.append(
                    base
                    | {"skipped": f"w > {c['stochastic_max']}: 400 matvecs of P = {_params(width):,} on CPU"}
                )
                continue
            row = base | _spawn({"kind": "width", **base, "budget": c["budget"]})
            rows.append(row)
            _log(f"width: {json.dumps(_brief(row))}")
    return {"settings": c, "rows": rows, "crossover": _crossover(rows)}


def section_kernel_size(cfg: dict) -> dict:
    c = cfg["kernel"]
    rows = []
    for n in c["ns"]:
        for method in ("matvec", "stochastic"):
            task = {"kind": "kernel-size", "method": method, "width": c["width"], "n": n}
            row = {"method": method, "n": n} | _spawn(
                task | {"budget": c["budget"], "exact_max_rows": c["exact_max_rows"]}
            )
            rows.append(row)
            _log(f"kernel-size: {json.dumps(_brief(row))}")
    return {"settings": c, "rows": rows} | _kernel_fits(rows)


def section_anchors(*, quick: bool, nt_venv: Path | None, rerun: bool, widths) -> dict:
    if quick:
        return {"skipped": "quick run: neural-tangents anchors are not run (about 12 min)"}
    venv = nt_venv or NT_VENV
    saved = HERE / "results" / "anchors.json"
    if not rerun and saved.exists():
        return json.loads(saved.read_text()) | {"source": f"reused {saved.relative_to(HERE.parent)}"}
    if not (venv / "bin" / "python").exists():
        return {"skipped": "no neural-tangents venv: run `bash benchmarks/setup_neural_tangents.sh`"}
    from benchmarks import anchors

    return anchors.run(widths, venv) | {"source": f"run now in {venv}"}


def _params(width: int) -> int:
    from ntkspec.memory import mlp_parameter_count

    return mlp_parameter_count(width)


def _brief(row: dict) -> dict:
    keep = ("method", "width", "n", "seconds", "peak_bytes", "erank_rel_error", "error", "skipped")
    return {k: row[k] for k in keep if k in row}


def _crossover(rows: list[dict]) -> dict:
    """Per exact path, the smallest width from which the stochastic spectrum is faster at every
    larger width measured (None if it is not faster at the largest common width)."""
    times = {(r["method"], r["width"]): r["seconds"] for r in rows if "seconds" in r}
    found = {}
    for exact in ("structured", "jacobian"):
        widths = sorted(w for m, w in times if m == "stochastic" and (exact, w) in times)
        crossing = None
        for w in reversed(widths):
            if times["stochastic", w] >= times[exact, w]:
                break
            crossing = w
        found[exact] = crossing
    return found


def _kernel_fits(rows: list[dict]) -> dict:
    """Log-log slopes of peak memory against N C (all points, and from 10^4 rows on, where fixed
    costs matter less), and the crossover: smallest N C from which the stochastic spectrum is faster
    than the exact one at every larger size where both ran."""
    slopes, upper = {}, {}
    for method in ("matvec", "stochastic"):
        pts = [r for r in rows if r["method"] == method and "peak_bytes" in r]
        slopes[method] = _loglog_slope(pts)
        upper[method] = _loglog_slope([r for r in pts if r["rows"] >= 10_000])
    both = sorted((r["rows"], r["seconds"] < r["exact_seconds"]) for r in rows if "exact_seconds" in r)
    crossing = None
    for size, faster in reversed(both):
        if not faster:
            break
        crossing = size
    return {"memory_slope": slopes, "memory_slope_from_1e4": upper, "crossover_rows": crossing}


def _loglog_slope(rows: list[dict]) -> float | None:
    """Least-squares slope of log(peak bytes) against log(N C)."""
    if len(rows) < 2:
        return None
    x = np.log([r["rows"] for r in rows])
    y = np.log([r["peak_bytes"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


# --------------------------------------------------------------------------------------------
# Figures.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MARKERS = {"structured": "o", "jacobian": "s", "stochastic": "^", "matvec": "o"}


def _plot_width(result: dict, path: Path) -> None:
    plt = _pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in ("structured", "jacobian", "stochastic"):
        pts = [r for r in result["rows"] if r["method"] == method and "seconds" in r]
        if not pts:
            continue
        w = [r["width"] for r in pts]
        label = {
            "structured": "exact (structured K)",
            "jacobian": "exact (Jacobian K)",
            "stochastic": "stochastic",
        }[method]
        ax_t.loglog(w, [r["seconds"] for r in pts], marker=MARKERS[method], label=label)
        ax_m.loglog(w, [r["peak_bytes"] / 2**20 for r in pts], marker=MARKERS[method], label=label)
    crossings: dict[int, list[str]] = {}
    for exact, width in result["crossover"].items():
        if width is not None:
            crossings.setdefault(width, []).append(exact)
    for width, beaten in crossings.items():
        ax_t.axvline(width, color="grey", ls="--", lw=1)
        ax_t.text(
            width,
            0.5,
            f" stochastic faster than\n exact ({', '.join(beaten)})",
            fontsize=7,
            transform=ax_t.get_xaxis_transform(),
        )
    rows = result["settings"]["n"] * 10
    ax_t.set(
        xlabel="width w", ylabel="seconds", title=f"time (N = {result['settings']['n']}, K {rows} x {rows})"
    )
    ax_m.set(xlabel="width w", ylabel="peak MiB (RSS rise + arguments)", title="peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def _plot_kernel_size(result: dict, path: Path) -> None:
    plt = _pyplot()
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(9, 3.4))
    rows = result["rows"]
    for method in ("matvec", "stochastic"):
        pts = [r for r in rows if r["method"] == method and "peak_bytes" in r]
        if not pts:
            continue
        slope = result["memory_slope"][method]
        label = f"{method} (slope {slope:.2f})" if slope is not None else method
        size = [r["rows"] for r in pts]
        ax_m.loglog(size, [r["peak_bytes"] for r in pts], marker=MARKERS[method], label=label)
        ax_t.loglog(size, [r["seconds"] for r in pts], marker=MARKERS[method], label=method)
    exact = [r for r in rows if "exact_seconds" in r]
    if exact:
        size = [r["rows"] for r in exact]
        label = "exact (structured K + eigvalsh)"
        ax_m.loglog(size, [r["exact_peak_bytes"] for r in exact], marker="s", label=label)
        ax_t.loglog(size, [r["exact_seconds"] for r in exact], marker="s", label=label)
    if result.get("crossover_rows"):
        ax_t.axvline(result["crossover_rows"], color="grey", ls="--", lw=1)
        ax_t.text(
            result["crossover_rows"],
            0.8,
            " stochastic faster\n than exact",
            fontsize=7,
            transform=ax_t.get_xaxis_transform(),
        )
    nc = sorted({r["rows"] for r in rows if "rows" in r})
    ax_m.loglog(nc, [4 * n * n for n in nc], "k--", lw=1, label="dense K alone, 4 (N C)^2 bytes")
    width = result["settings"]["width"]
    ax_m.set(xlabel="N C (kernel rows)", ylabel="peak bytes", title=f"memory, width {width}")
    ax_t.set(xlabel="N C (kernel rows)", ylabel="seconds", title="time")
    for ax in (ax_m, ax_t):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def _plot_real(real: dict, path: Path) -> None:
    """RMS relative error of the effective rank against matvecs: one panel per dataset."""
    plt = _pyplot()
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
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Summary.


def _fmt_s(x) -> str:
    return "–" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")


def _fmt_b(x) -> str:
    return "–" if x is None else f"{x / 2**20:,.1f} MiB"


def _fmt_e(x) -> str:
    return "–" if x is None else f"{x:+.1e}"


def _summary(results: dict, meta: dict) -> str:
    flag = {"full": "", "quick": " --quick", "smoke": " --smoke"}[meta["scale"]]
    lines = [
        f"# Benchmark suite ({meta['scale']})",
        "",
        f"`python -m benchmarks run{flag}`, float32 unless said. Each section as it was last run "
        "(`--only` reruns one section and keeps the others):",
        "",
    ]
    for name, r in results.items():
        run = r.get("run") or {"date": r.get("machine", {}).get("date", "date not recorded"), "note": ""}
        m = run.get("machine") or r.get("machine")
        where = "machine not recorded"
        if m:
            where = f"{m['platform']}, {m['cpu_count']} CPU cores, {m['device']}, JAX {m['jax']}"
            if "load_average_at_end" in m:
                where += f", load average at end {m['load_average_at_end'][0]:.1f}"
        lines.append(f"- {name}: {r['seconds']:.0f} s, {run['date']}, {where}. {run['note']}".rstrip())
    lines.append("")
    if "work-precision" in results:
        lines += _summary_wp(results["work-precision"])
    if "width" in results:
        lines += _summary_width(results["width"])
    if "kernel-size" in results:
        lines += _summary_kernel(results["kernel-size"])
    if "anchors" in results:
        lines += _summary_anchors(results["anchors"])
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    """A markdown table; columns from `right_from` on are right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(cells) + " |" for cells in (header, align, *rows)]


def _summary_wp(r: dict) -> list[str]:
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
        lines += _table(header, rows, right_from=2) + [""]
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
                _fmt_s(row["seconds_per_spectrum"]),
            ]
        )
    header = ["state", "kernel", "B", "exact erank", "RMS rel. error", "max rel. error"]
    header += ["mean rel. stderr", "coverage", "time / spectrum"]
    return lines + _table(header, rows, right_from=2) + [""]


def _summary_width(r: dict) -> list[str]:
    c = r["settings"]
    size = c["n"] * 10
    budget = next((row["budget"] for row in r["rows"] if "budget" in row), None)
    lines = [
        "## Width",
        "",
        f"3-layer ReLU MLP 784 → w → w → 10, N = {c['n']} uniform inputs (K is {size} × {size}). "
        'exact (structured) = compiled `op.dense("structured")` + `eigvalsh`, what `spectrum(op, "exact")` '
        'does; exact (jacobian) = the same with `op.dense("jacobian")`; stochastic = exact diagonal + '
        f"Krylov-aware estimator at the default budget ({budget} matvecs). Compilation not timed; peak = "
        "process RSS rise during the run + resident arguments, one fresh process per row; XLA bytes = "
        "`memory_analysis()` of the compiled programs (excludes SciPy's `eigvalsh`). "
        "The error column is the stochastic effective rank against the exact one, or K against K.",
        "![width](width.png)",
        "",
    ]
    rows = []
    for row in r["rows"]:
        head = [str(row["width"]), f"{_params(row['width']):,}", row["method"]]
        if "skipped" in row or "error" in row:
            what = f"skipped: {row['skipped']}" if "skipped" in row else f"failed: {row['error']}"
            rows.append(head + [what, "", "", ""])
            continue
        if row["method"] == "structured":
            err = f"reference (erank {row['effective_rank']:.1f})"
        elif row["method"] == "jacobian":
            err = f"{_fmt_e(row.get('max_rel_diff_vs_structured'))} (K)"
        else:
            err = _fmt_e(row.get("erank_rel_error"))
        rows.append(head + [_fmt_s(row["seconds"]), _fmt_b(row["peak_bytes"]), _fmt_b(row["xla_bytes"]), err])
    header = ["w", "parameters", "method", "time", "peak memory", "XLA bytes", "error vs exact"]
    cross = ", ".join(f"vs {k}: {'w = ' + str(v) if v else 'none'}" for k, v in r["crossover"].items())
    crossover = "Crossover (smallest width from which the stochastic spectrum is faster at every larger "
    return lines + _table(header, rows, right_from=3) + ["", crossover + f"width run): {cross}.", ""]


def _summary_kernel(r: dict) -> list[str]:
    c = r["settings"]
    lines = [
        "## Kernel size",
        "",
        f"Same MLP at width {c['width']}, C = 10, matrix-free: one matvec block (K V for V with "
        f"`probe_block` columns) and the stochastic spectrum at budget {c['budget']}; beside the stochastic "
        f"rows, where K has ≤ {c['exact_max_rows']:,} rows, the exact spectrum (structured K + `eigvalsh`, "
        "same process, after it) for its time, memory and the error. Peak = RSS rise + resident arguments "
        "(the inputs, 784 floats per sample, included); model = `ntkspec.memory.matvec_bytes`. "
        "![kernel size](kernel_size.png)",
        "",
    ]
    rows = []
    for row in r["rows"]:
        head = [str(row["n"]), f"{row['n'] * 10:,}", row["method"]]
        if "error" in row:
            rows.append(head + [f"failed: {row['error']}"] + [""] * 7)
            continue
        exact = "exact_seconds" in row
        rows.append(
            head
            + [
                _fmt_s(row["seconds"]),
                _fmt_b(row["peak_bytes"]),
                _fmt_b(row["xla_bytes"]),
                _fmt_b(row.get("model_bytes")),
                _fmt_b(row["dense_kernel_bytes"]),
                _fmt_s(row["exact_seconds"]) if exact else "–",
                _fmt_b(row["exact_peak_bytes"]) if exact else "–",
                _fmt_e(row.get("erank_rel_error")),
            ]
        )
    header = ["N", "N·C", "method", "time", "peak memory", "XLA bytes", "model", "dense K"]
    header += ["exact: time", "exact: peak", "erank error"]

    def slopes(fits: dict) -> str:
        return ", ".join(f"{m} {s:.2f}" for m, s in fits.items() if s is not None)

    fit = (
        f"Log-log slope of peak memory against N·C: {slopes(r['memory_slope'])} over all sizes; "
        f"{slopes(r['memory_slope_from_1e4'])} from 10⁴ rows on (a dense kernel: 2). Crossover (smallest "
        "N·C from which the stochastic spectrum is faster than the exact one at every larger size run): "
        + (f"{r['crossover_rows']:,} rows." if r.get("crossover_rows") else "none.")
    )
    return lines + _table(header, rows, right_from=3) + ["", fit, ""]


def _summary_anchors(r: dict) -> list[str]:
    lines = ["## Anchors: neural-tangents", ""]
    if "rows" not in r:
        return lines + [f"Skipped: {r.get('skipped') or r.get('error')}", ""]
    lines += [
        "Exact kernel of the same MLP (N = 128) against neural-tangents' `empirical_ntk_fn` "
        f"({r.get('source', '')}; measured {r['machine']['date']}). Max rel. difference against ntkspec "
        "in brackets. GEMM floor: the Dense rule's large products alone (Δ_1 = (Δ_2 W_2ᵀ) ⊙ mask, then "
        "Δ_1 Δ_1ᵀ + Δ_2 Δ_2ᵀ) as bare XLA products; best NT / floor bounds the speed-up any "
        "implementation of that rule could have over neural-tangents.",
        "",
    ]
    rows = []
    for row in r["rows"]:
        cells = [str(row["width"]), _fmt_s(row["ntkspec_structured_s"])]
        for name in ("nt_impl1", "nt_impl2", "nt_impl3", "jacobian_baseline"):
            if name + "_s" in row:
                cells.append(f"{_fmt_s(row[name + '_s'])} ({row[name + '_max_rel_diff']:.0e})")
            else:
                cells.append(row.get(name + "_error", "–"))
        floor = row.get("gemm_floor_s")
        cells.append("–" if floor is None else _fmt_s(floor))
        for ratio in ("speedup_vs_best_nt", "best_nt_over_floor"):
            cells.append("–" if row.get(ratio) is None else f"{row[ratio]:.1f}×")
        rows.append(cells)
    header = ["w", "ntkspec structured", "NT impl 1", "NT impl 2", "NT impl 3", "Jacobian baseline"]
    header += ["GEMM floor", "speed-up vs best NT", "best NT / floor"]
    return lines + _table(header, rows) + [""]


# --------------------------------------------------------------------------------------------
# Driver.


def run_suite(
    *,
    scale: str = "full",
    out: Path | None = None,
    only: tuple[str, ...] = SECTIONS,
    nt_venv: Path | None = None,
    rerun_anchors: bool = False,
    anchor_widths=(256, 1024, 4096),
    data_dir: Path | None = DATA_DIR,
    note: str = "",
) -> Path:
    """Run the sections of `only` at `scale` ("full", "quick" or "smoke"); return the output folder.

    `data_dir` holds `mnist/` for the MNIST real NTKs of a full run (skipped, and said so, without it).
    """
    from benchmarks._timing import machine

    cfg = SCALES[scale]
    default = HERE / "results" / ("suite" if scale == "full" else f"suite-{scale}")
    out = default if out is None else Path(out).resolve()  # workers run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for name in SECTIONS:
        if name not in only:
            continue
        _log(f"section {name} ({scale})")
        t0 = time.perf_counter()
        if name == "work-precision":
            result = section_work_precision(cfg, out, data_dir)
        elif name == "width":
            result = section_width(cfg)
        elif name == "kernel-size":
            result = section_kernel_size(cfg)
        else:
            result = section_anchors(
                quick=scale != "full", nt_venv=nt_venv, rerun=rerun_anchors, widths=anchor_widths
            )
        stamp = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine() | {"load_average_at_end": os.getloadavg()},
            "note": note,
        }
        result = {"section": name, "scale": scale, "seconds": time.perf_counter() - t0, "run": stamp} | result
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
        results[name] = result
    meta = {
        "scale": scale,
        "sections": list(results),
        "seconds": time.perf_counter() - start,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine() | {"load_average_at_end": os.getloadavg()},
        "note": note,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    render(out)
    _log(f"done in {meta['seconds']:.0f} s: {out / 'summary.md'}")
    return out


def render(out: Path) -> Path:
    """Draw the figures and write `summary.md` from the JSON files in `out` (rerunnable alone)."""
    out = Path(out)
    meta = json.loads((out / "meta.json").read_text())
    # Every section found in `out`: a section rerun alone (--only) keeps the others' results.
    results = {
        name: json.loads((out / f"{name}.json").read_text())
        for name in SECTIONS
        if (out / f"{name}.json").exists()
    }
    real = results.get("work-precision", {}).get("real_ntk", {})
    if any("rows" in block for block in real.values()):
        _plot_real(real, out / "real_ntk_erank.png")
    if "width" in results:
        results["width"]["crossover"] = _crossover(results["width"]["rows"])
        _plot_width(results["width"], out / "width.png")
    if "kernel-size" in results:
        results["kernel-size"] |= _kernel_fits(results["kernel-size"]["rows"])
        _plot_kernel_size(results["kernel-size"], out / "kernel_size.png")
    (out / "summary.md").write_text(_summary(results, meta))
    return out / "summary.md"
