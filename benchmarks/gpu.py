"""One call on a lent GPU: `python -m benchmarks.gpu --out DIR [--budget S] [--skip STAGES]`.

A device machine is lent for minutes, so this script does, in one call and within `--budget`
seconds, what only a GPU can tell. Each stage gets what is left of the budget (minus a reserve for
the stages after it) and writes its result as soon as it is known (DIR/gpu.json, and the rows of
`exact` and `profile` line by line), so a call stopped early still returns what finished:

1. environment: device, driver, JAX and library versions.
2. tests: `tests/test_operator.py` (every operator path against a float64 `jax.jacrev` reference)
   on the accelerator.
3. exact: the study MLP 784 -> w -> w -> 10 on N = 128 uniform inputs (K is 1280 x 1280): the exact
   kernel (`op.dense()`) and spectrum (`eigvalsh`) timed against width, at JAX's "default" matmul
   precision (TF32 on Hopper) and at "highest", each against a float64 reference where it fits.
4. profile: where a protocol sweep's time goes at its first width (training loop compiled and
   warm, a record compiled and warm, a record's parts).
5. sweep: the depth-3 protocol width sweep (`mnist-protocol-depth3`: calibrated learning rate, the
   NTK at the exact minimum test loss) at widths past the CPU's, packed as DIR/NAME.zarr.zip with
   its analysis and figures in DIR/sweep-analysis.tar.gz.
6. ensembles: the suite's "ensembles" section (a point's seeds in one vmapped program against the
   per-seed loop), case by case, into DIR/ensembles.md.

Every stage runs with JAX_DEFAULT_MATMUL_PRECISION=highest (`exact` sets its own), the float32
arithmetic of the CPU runs it is compared with, and one persistent compilation cache. `--smoke`
runs everything at toy sizes on any machine. What the first calls measured, and what they could not
finish in their time, is in benchmarks/RESULTS.md ("GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from benchmarks import _harness as h

DATA_DIR = h.ROOT.parent / "shared" / "data"
#: JAX's "default" (TF32 on Hopper: what JAX gives a user who sets nothing, and what ntkspec replaced
#: by "highest" in its own entry points after this measurement; see `ntkspec.precision`).
PRECISIONS = {"default": "default", "highest": "highest"}
#: Seconds each later stage keeps for itself while an earlier one runs.
RESERVE = {"tests": 90, "exact": 60, "profile": 60, "sweep": 30, "ensembles": 100, "final": 20}
SIZES = {
    "gpu": {
        "tests": ["tests/test_operator.py"],
        "exact_widths": [1024, 4096, 16384, 65536],
        "reference_max": 4096,
        "config": "mnist-protocol-depth3",
        "sweep_widths": [8192, 16384],
        "seeds": 5,
        "epochs": None,
        "profile_lr": 3.16e-6,  # what the calibration chose at w = 8192 on the H200
        "profile_epochs": 50,
        "ensemble_widths": [4096, 64, 512, 8],
        "data_scaling": 1000,
    },
    "smoke": {
        "tests": ["tests/test_operator.py", "-k", "test_dense"],
        "exact_widths": [16, 32],
        "reference_max": 16,
        "config": "quickstart",
        "sweep_widths": [8, 16],
        "seeds": 2,
        "epochs": 20,
        "profile_lr": 1e-3,
        "profile_epochs": 20,
        "ensemble_widths": [8],
        "data_scaling": None,
    },
}


class Clock:
    """Seconds left of a budget, less the reserves of the stages still to come."""

    def __init__(self, budget: float):
        self.budget, self.start = budget, time.monotonic()

    def left(self, *later: str) -> float:
        return self.budget - (time.monotonic() - self.start) - sum(RESERVE[s] for s in later)


def exact_task(task: dict) -> dict:
    """Stage 3, in a fresh process on the accelerator: per width and precision, the compiled
    `dense()` and `eigvalsh` times (best of 3 after a warm-up), the effective rank, and the relative
    Frobenius error of K against float64 (widths up to `reference_max`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import ntkspec
    from ntkspec.estimators import entropy_from_eigenvalues
    from ntkspec.spectrum import eigvalsh

    jax.config.update("jax_enable_x64", True)
    x = h.uniform_inputs(128)
    rows = []
    for width in task["widths"]:
        if time.monotonic() > task["deadline"]:
            rows.append({"width": width, "skipped": "out of time"})
            continue
        model = h.study_mlp(width)
        reference = None
        if width <= task["reference_max"]:
            graphdef, state = nnx.split(model)
            wide = nnx.merge(graphdef, jax.tree.map(lambda a: a.astype(jnp.float64), state))
            reference = np.asarray(ntkspec.ntk(wide, x.astype(jnp.float64)).dense())
        for name, precision in PRECISIONS.items():
            with jax.default_matmul_precision(precision):
                op = ntkspec.ntk(model, x)
                dense = h.compile_dense(op)
                dense_s = h.best_time(dense, op)
                kernel = dense(op)
                eig_s = h.best_time(eigvalsh, kernel)
                values = jnp.asarray(eigvalsh(kernel), jnp.float64)
            row = {
                "width": width,
                "precision": name,
                "parameters": sum(leaf.size for leaf in jax.tree.leaves(op.params)),
                "dense_s": dense_s,
                "eigvalsh_s": eig_s,
                "xla_bytes": h.xla_peak(dense),
                "effective_rank": float(np.exp(entropy_from_eigenvalues(values))),
            }
            if reference is not None:
                error = np.linalg.norm(np.asarray(kernel, np.float64) - reference) / np.linalg.norm(reference)
                row["rel_error_vs_float64"] = float(error)
            rows.append(row)
            _append(task["log"], row)
        del model, op, kernel
    return {"rows": rows, "machine": h.machine()}


def profile_task(task: dict) -> dict:
    """Stage 4, in a fresh process on the accelerator: where a protocol sweep's time goes at one
    width. The seeds of the first point of `task["config"]` (its data, models and optimiser at
    `task["lr"]`): `train_ensemble` over `task["epochs"]` epochs without records, twice (compiling,
    then compiled), and one seed's record (`Measure`) three times (the first forms K₀ and K∞), the
    last split into its parts. Every timing is appended to `task["log"]` as it is known."""
    import jax

    from ntkspec import data
    from ntkspec.experiments.config import load_config, run_model, run_split, runs
    from ntkspec.experiments.train import config_optimizer, train_ensemble

    config = load_config(
        task["config"], widths=task["widths"], seeds=task["seeds"], data_dir=task["data_dir"], store="unused"
    )
    dataset = data.load(config.dataset, config.data_dir)
    group = runs(config)[: config.seeds]
    splits = [run_split(config, run, dataset) for run in group]
    optimizer = config_optimizer(config, task["lr"])
    rows = []

    def timed(name, fn):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        rows.append({"what": name, "seconds": time.perf_counter() - start, "width": config.widths[0]})
        _append(task["log"], rows[-1])
        return out

    what = f"train_ensemble {len(group)} seeds x {task['epochs']} epochs, eval every {config.eval_every}"
    for phase in ("cold", "warm"):
        models = [run_model(config, run, split) for run, split in zip(group, splits, strict=True)]
        timed(
            f"{what} ({phase})",
            lambda models=models: (
                train_ensemble(models, splits, optimizer, [0, task["epochs"]], eval_every=config.eval_every)[
                    0
                ].min_test_loss
            ),
        )
    from ntkspec.experiments.measure import Measure

    model = run_model(config, group[0], splits[0])
    measure = Measure(splits[0], group[0].keys()[2], top_k=config.top_k, method=config.method)
    metrics = dict.fromkeys(("train_loss", "test_loss", "train_accuracy", "test_accuracy"), 0.0)
    for i in range(3):
        timed(f"record {i}", lambda i=i: measure(model, i, metrics).trace)
    timed("record part: operator (dense K)", lambda: measure.operator(model).dense())
    op = measure.operator(model)
    timed("record part: raw and cosine spectra", lambda: measure.spectra(op, 3)[0].trace)
    timed("record part: kernel regression", lambda: measure._regression(model)[0])
    key = jax.random.key(0)
    timed("record part: top-80 eigenvectors", lambda: measure._eigenvectors(op, [80], key)[1])
    return {"rows": rows, "machine": h.machine()}


def _append(path: str, row: dict) -> None:
    """One JSON line, written at once (a stage stopped at its limit keeps what it measured)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _run(command: list[str], log: Path, timeout: float, env: dict) -> dict:
    """`command` with its output in `log`; its exit code and seconds, or that it ran out of time."""
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        try:
            code = subprocess.run(
                command, cwd=h.ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=max(timeout, 1)
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    return {"command": " ".join(command[2:]), "exit": code, "seconds": time.monotonic() - start}


def _environment() -> dict:
    import importlib.metadata as md

    import jax

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "zarr", "xarray"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    fields = "name,driver_version,memory.total,clocks.max.sm"
    query = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"]
    smi = subprocess.run(query, capture_output=True, text=True) if shutil.which("nvidia-smi") else None
    return {
        "machine": h.machine(),
        "devices": [str(d) for d in jax.devices()],
        "versions": versions,
        "nvidia_smi": smi.stdout.strip() if smi else None,
    }


def _sweep(sizes: dict, out: Path, work: Path, data_dir: Path, clock: Clock, env: dict) -> dict:
    name = f"{sizes['config']}-gpu"
    store = work / f"{name}.zarr"
    ntk = [sys.executable, "-m", "ntkspec"]
    command = ntk + ["sweep", sizes["config"], "--widths", ",".join(map(str, sizes["sweep_widths"]))]
    command += ["--seeds", str(sizes["seeds"]), "--store", str(store), "--data-dir", str(data_dir)]
    command += ["--no-progress", "--no-analyze"]
    if sizes["epochs"] is not None:
        command += ["--epochs", str(sizes["epochs"])]
    log = out / "sweep.log"
    result = {"run": _run(command, log, clock.left("ensembles", "final"), env)}
    if store.exists():
        result["analyze"] = _run(ntk + ["analyze", str(store)], log, min(60, clock.left("final")), env)
        result["plot"] = _run(
            ntk + ["plot", str(store), "--formats", "png"], log, min(60, clock.left("final")), env
        )
        result["pack"] = _run(
            ntk + ["pack", str(store), "--out", str(out / f"{name}.zarr.zip")], log, 60, env
        )
        with tarfile.open(out / "sweep-analysis.tar.gz", "w:gz") as tar:
            for path in sorted(work.iterdir()):
                if path != store:
                    tar.add(path, arcname=path.name)
    return result


def _ensembles(sizes: dict, out: Path, data_dir: Path, platform: str, clock: Clock, results: dict, save):
    from benchmarks import ensembles, suite

    scale = "smoke" if sizes["data_scaling"] is None else "full"
    settings = suite.SCALES[scale]["ensembles"] | {
        "platform": platform,
        "data_dir": str(data_dir),
        "repeats": 1,
    }
    cases = [{"widths": [w], "data_scaling": None} for w in sizes["ensemble_widths"]]
    if sizes["data_scaling"] is not None:
        cases.insert(2, {"widths": [], "data_scaling": sizes["data_scaling"]})
    section = {"settings": settings, "rows": [], "skipped": []}
    for case in cases:
        left = clock.left("final")
        if left < RESERVE["ensembles"] / 3:
            section["skipped"].append(case)
            continue
        section["rows"] += ensembles.section(settings | case | {"timeout": left / 2})["rows"]
        results["stages"]["ensembles"] = section
        save()
        (out / "ensembles.md").write_text("\n".join(ensembles.summary(section)))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["_exact"], ["_profile"]):
        task = exact_task if argv[0] == "_exact" else profile_task
        print(json.dumps(task(json.loads(argv[1]))), flush=True)
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="results folder (the device's $OUT)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all stages together")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with mnist/")
    parser.add_argument("--platform", default="cuda", help="JAX platform of every stage")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, any machine (the test)")
    parser.add_argument("--skip", default="", help="stages to leave out, comma-separated")
    args = parser.parse_args(argv)
    clock, sizes = Clock(args.budget), SIZES["smoke" if args.smoke else "gpu"]
    out, work = args.out.resolve(), Path(tempfile.mkdtemp(prefix="ntkspec-gpu-"))  # the store, unpacked
    out.mkdir(parents=True, exist_ok=True)
    data_dir, skip = args.data_dir.resolve(), set(args.skip.split(","))
    env = dict(os.environ, JAX_PLATFORMS=args.platform, JAX_DEFAULT_MATMUL_PRECISION="highest")
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # this process and each stage's share one GPU
    # One persistent compilation cache for every stage: the profile compiles the sweep's programs at
    # its first width (47 s for the training loop, 83 s for the records' on an H200), the sweep reuses them.
    env["JAX_COMPILATION_CACHE_DIR"] = str(work / "jax-cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(h.ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ.update(env)  # the ensembles' workers inherit it
    results = {"budget_s": args.budget, "sizes": sizes, "stages": {}}

    def save():
        results["seconds"] = time.monotonic() - clock.start
        (out / "gpu.json").write_text(json.dumps(results, indent=1))

    def stage(name: str, fn) -> None:
        if name in skip:
            return
        h.log(f"stage {name}, {clock.left():.0f} s left")
        try:
            results["stages"][name] = fn()
        except Exception as error:  # a stage that breaks is data; the next ones still run
            results["stages"][name] = {"error": f"{type(error).__name__}: {error}"}
        save()
        h.log(f"stage {name}: {json.dumps(results['stages'][name])[:600]}")

    stage("environment", _environment)
    stage(
        "tests",
        lambda: _run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-W",
                "ignore::DeprecationWarning",
            ]
            + sizes["tests"],
            out / "tests.log",
            min(90, clock.left("exact", "sweep", "ensembles", "final")),
            env,
        ),
    )
    deadline = time.monotonic() + min(60, clock.left("sweep", "ensembles", "final"))
    task = {"widths": sizes["exact_widths"], "reference_max": sizes["reference_max"], "deadline": deadline}
    task["log"] = str(out / "exact.jsonl")
    stage(
        "exact",
        lambda: h.spawn(
            ["benchmarks.gpu", "_exact", json.dumps(task)],
            platform=args.platform,
            timeout=deadline - time.monotonic() + 30,
        ),
    )
    task = {key: sizes[key] for key in ("config", "seeds")} | {
        "epochs": sizes["profile_epochs"],
        "widths": sizes["sweep_widths"][:1],
        "lr": sizes["profile_lr"],
        "data_dir": str(data_dir),
        "log": str(out / "profile.jsonl"),
    }
    stage(
        "profile",
        lambda: h.spawn(
            ["benchmarks.gpu", "_profile", json.dumps(task)],
            platform=args.platform,
            timeout=min(150, clock.left("sweep", "ensembles", "final")),
        ),
    )
    stage("sweep", lambda: _sweep(sizes, out, work, data_dir, clock, env))
    if "ensembles" not in skip:
        _ensembles(sizes, out, data_dir, args.platform, clock, results, save)
    save()
    h.log(f"done in {results['seconds']:.0f} s: {out / 'gpu.json'}")


if __name__ == "__main__":
    main()
