"""What every benchmark shares: workers in fresh processes, timing, peak memory, the study's MLP and
its programs compiled ahead of time through ntkspec's public API, and the summary's formatting.

Memory. A measurement runs in a fresh process with glibc's mmap threshold at 64 KiB
(`MALLOC_MMAP_THRESHOLD_`), so every freed buffer leaves the resident set; its peak is the rise of
the resident set during the call (`rss_rise`: VmHWM reset through /proc/self/clear_refs, minus VmRSS
before; Linux only) plus the bytes of the arguments already resident (`argument_bytes`). XLA's own
figure for a compiled program is `xla_peak` (`Compiled.memory_analysis()`: arguments + outputs +
temporaries - aliased).

Programs. The operator is a pytree, so its methods compile ahead of time as they are:
`jax.jit(NTKOperator.matvec).lower(op, v).compile()` and likewise `dense` and `diagonal`; the
stochastic spectrum is the exact diagonal's trace and `ntkspec.krylov_spectrum`, what
`ntkspec.spectrum(op, "stochastic")` runs (tests/test_benchmarks.py checks that they agree).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import ntkspec
from ntkspec.estimators import entropy_from_eigenvalues
from ntkspec.models import build
from ntkspec.spectrum import DEFAULT_TOP_K, eigvalsh

ROOT = Path(__file__).resolve().parent.parent  # the repository: workers run from here

# --------------------------------------------------------------------------------------------
# Processes.


def worker_env(devices: int = 1, platform: str = "cpu") -> dict[str, str]:
    """The environment of a measurement process: JAX on `platform` ("cpu", or "cuda" on a GPU
    machine), `devices` simulated CPU devices, float32 unless the worker enables x64 itself,
    allocations of 64 KiB or more mmap-ed (so freed buffers leave the resident set and its rise during
    a call is that call's peak), and SciPy's BLAS on one thread."""
    env = dict(os.environ, JAX_PLATFORMS=platform, MALLOC_MMAP_THRESHOLD_="65536")
    # On a shared, oversubscribed CPU, OpenBLAS threads spinning against other jobs made a 1280-row
    # eigvalsh take 0.3-14 s instead of 0.07-0.16 s.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    if devices != 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env.pop("JAX_ENABLE_X64", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def spawn(
    module_args: list[str],
    *,
    devices: int = 1,
    platform: str = "cpu",
    timeout: float | None = None,
    echo: bool = False,
) -> dict:
    """Run `python -m MODULE ARGS...` in a fresh process; the JSON of its last stdout line.

    Failures (an exception, killed for memory, `timeout` seconds passed) come back as
    {"error": ...}, so that one bad measurement does not stop a run. `echo` lets the worker's stderr
    (its progress) through to ours instead of keeping it for the error message.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-m", *module_args],
            env=worker_env(devices, platform),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=None if echo else subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {last_error(done.stderr or '')}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def spawn_task(task: dict, timeout: float | None = None) -> dict:
    """Run one suite task in a fresh process on one device of `task["platform"]` (default "cpu"):
    `python -m benchmarks _worker TASK`, which runs the function `suite.TASKS[task["kind"]]`."""
    platform = task.get("platform", "cpu")
    return spawn(["benchmarks", "_worker", json.dumps(task)], platform=platform, timeout=timeout)


def last_error(stderr: str) -> str:
    """The exception line of a worker's traceback (JAX appends a note after it), else the last line."""
    lines = stderr.strip().splitlines() or [""]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    return (errors or lines)[-1][:300]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def brief(row: dict) -> dict:
    """The fields of a measurement worth a log line."""
    keep = ("method", "width", "n", "seconds", "peak_bytes", "erank_rel_error", "error", "skipped")
    return {k: row[k] for k in keep if k in row}


# --------------------------------------------------------------------------------------------
# Timing.


def best_time(fn, *args, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` calls of `fn(*args)`, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def timed_run(fn, repeats: int):
    """Best seconds of `repeats` blocked calls of fn(), the peak bytes of the first, its last output.

    For compiled programs: no warm-up, the first call is timed and its memory measured."""
    times, outs = [], []

    def once():
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
        outs.append(out)
        return out

    rise = rss_rise(once)
    for _ in range(repeats - 1):
        outs.clear()
        once()
    return min(times), rise, outs[-1]


def machine() -> dict:
    """What the figures were measured on."""
    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


# --------------------------------------------------------------------------------------------
# Memory.


def _status() -> dict[str, int]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def rss_rise(fn, *args) -> int:
    """Peak resident bytes during fn(*args) above those before it (Linux only)."""
    gc.collect()
    time.sleep(0.2)  # let buffers freed by earlier calls go back first
    before = _status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    jax.block_until_ready(fn(*args))
    return _status()["VmHWM"] - before


def xla_peak(compiled) -> int:
    """XLA's peak bytes of a compiled program (per device): arguments + outputs + temporaries."""
    m = compiled.memory_analysis()
    return int(
        m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    )


def argument_bytes(*trees) -> int:
    """Bytes of the arrays in `trees` (resident before a call, so not in its RSS rise)."""
    return sum(leaf.nbytes for leaf in jax.tree.leaves(trees) if hasattr(leaf, "nbytes"))


# --------------------------------------------------------------------------------------------
# The study's MLP and its programs.


def study_mlp(width: int, in_features: int = 784, depth: int = 3, key: int = 1):
    """The study's ReLU MLP in_features -> w -> ... -> 10 (`ntkspec.models.MLP`: LeCun-normal weights,
    zero biases), float32."""
    return build("mlp", (in_features,), 10, jax.random.key(key), width=width, depth=depth)


def uniform_inputs(n: int, features: int = 784) -> jax.Array:
    return jax.random.uniform(jax.random.key(0), (n, features), jnp.float32)


def study_operator(width: int, n: int, mesh=None) -> ntkspec.NTKOperator:
    """The NTK of `study_mlp(width)` on `n` uniform inputs (K is 10 n x 10 n)."""
    return ntkspec.ntk(study_mlp(width), uniform_inputs(n), mesh=mesh)


def compile_matvec(op: ntkspec.NTKOperator, v: jax.Array):
    """`op.matvec(v)` compiled ahead of time; call it as `compiled(op, v)`."""
    return jax.jit(ntkspec.NTKOperator.matvec).lower(op, v).compile()


def compile_dense(op: ntkspec.NTKOperator, path: str = "auto"):
    """`op.dense(path)` compiled ahead of time; call it as `compiled(op)`."""
    return jax.jit(ntkspec.NTKOperator.dense, static_argnums=1).lower(op, path).compile()


def exact_spectrum(op: ntkspec.NTKOperator, path: str, repeats: int) -> dict:
    """`spectrum(op, "exact")` with K from `path`: compiled `dense(path)`, then `eigvalsh`."""
    start = time.perf_counter()
    dense = compile_dense(op, path)
    compile_s = time.perf_counter() - start

    def run():
        kernel = dense(op)
        return kernel, eigvalsh(kernel)

    seconds, rise, (kernel, eigenvalues) = timed_run(run, repeats)
    erank = float(np.exp(entropy_from_eigenvalues(jnp.asarray(eigenvalues))))
    return {
        "seconds": seconds,
        "compile_s": compile_s,
        "peak_bytes": rise + argument_bytes(op),
        "xla_bytes": xla_peak(dense),
        "effective_rank": erank,
        "kernel": kernel,
    }


def stochastic_spectrum(op: ntkspec.NTKOperator, budget: int, repeats: int, key_seed: int = 0) -> dict:
    """`spectrum(op, "stochastic", key=key(key_seed), budget=budget)` as two compiled programs: the
    exact diagonal (its trace summed in float64 where x64 is on, as `spectrum` does), then the
    Krylov-aware estimator."""
    key = jax.random.key(key_seed)
    total = jax.dtypes.canonicalize_dtype(jnp.float64)
    settings = {"budget": budget, "top_k": min(DEFAULT_TOP_K, op.shape[0])}
    start = time.perf_counter()
    diagonal = jax.jit(ntkspec.NTKOperator.diagonal).lower(op).compile()
    trace = jnp.sum(diagonal(op).astype(total))
    krylov = jax.jit(ntkspec.krylov_spectrum, static_argnames=tuple(settings))
    estimator = krylov.lower(op, key, trace=trace, **settings).compile()
    compile_s = time.perf_counter() - start

    def run():
        return estimator(op, key, trace=jnp.sum(diagonal(op).astype(total)))

    seconds, rise, result = timed_run(run, repeats)
    return {
        "seconds": seconds,
        "compile_s": compile_s,
        "peak_bytes": rise + argument_bytes(op, key),
        "xla_bytes": xla_peak(diagonal) + xla_peak(estimator),
        "effective_rank": float(result.effective_rank),
        "effective_rank_stderr": float(result.effective_rank_stderr),
        "matvecs": int(result.matvecs),
    }


# --------------------------------------------------------------------------------------------
# Summaries and figures.


def fmt_s(x) -> str:
    return "–" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s")


def fmt_b(x) -> str:
    return "–" if x is None else f"{x / 2**20:,.1f} MiB"


def fmt_e(x) -> str:
    return "–" if x is None else f"{x:+.1e}"


def table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    """A markdown table; columns from `right_from` on are right-aligned."""
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(cells) + " |" for cells in (header, align, *rows)]


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported only where figures are drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Grid every panel, lay out, write at 70 dpi and close."""
    for ax in fig.axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    pyplot().close(fig)


def write_json(path: str | Path | None, result: dict) -> None:
    """`result` as indented JSON at `path` (nothing when `path` is None: a script run without --out)."""
    if path is not None:
        Path(path).write_text(json.dumps(result, indent=1))
