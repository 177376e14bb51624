"""Scale-out: one matvec (a block of 32 probes) and the exact kernel against device count, and the
memory model (`ntkspec.memory`) against measured memory.

The driver runs one worker subprocess per device count D in `--devices` (default 1,2,4,8) with
`XLA_FLAGS=--xla_force_host_platform_device_count=D` set before JAX starts, on the meshes data=D
and data=D/2,model=2. The model is the study's 3-layer MLP 784 -> w -> w -> 10 (`_harness.study_mlp`)
at N = 128 and N = 1024. Each worker records, per mesh and N:

- seconds: best of `--repeats` calls of the compiled matvec / `dense()` after a warm-up;
- XLA's per-device peak: `Compiled.memory_analysis()`, arguments + outputs + temporaries - aliased
  (XLA's buffer assignment on one device; CPU devices have no `memory_stats()`);
- `ntkspec.memory`'s prediction per device;
- the max relative difference of K V and of K (sampled rows) against D = 1;
and, per worker, its peak resident set (`getrusage` maxrss: all simulated devices together) and
XLA's per-device peak of a full-batch Adam step (`optax.adam`) against the model.

Then a compile-only sweep of the matvec's per-device peak (XLA) against the model, widths 256 and
1024, N = 128, 512, 1024, on six meshes of 8 devices up to data=1,model=8. And a memory check on one
device, one fresh process per measurement: for a few widths, predicted
bytes against the process peak (the rise of the resident set during the first call, VmHWM after
resetting it through /proc/self/clear_refs minus VmRSS before, plus the bytes of the arguments
already resident) and against XLA's figure, for the matvec, the exact kernel and the Adam step.

Usage: python -m benchmarks.device_scaling [--devices 1,2,4,8] [--width 256] [--ns 128,1024]
[--check-widths 256,512,1024] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import ntkspec
from benchmarks import _harness as h
from ntkspec import memory
from ntkspec.sharding import make_mesh, shard_batch, shard_params

PROBES = 32


def _mesh_shape(mesh) -> tuple[int, int]:
    return (1, 1) if mesh is None else (mesh.shape["data"], mesh.shape["model"])


def _sample_rows(k: np.ndarray) -> np.ndarray:
    return k[:: max(1, k.shape[0] // 1280)]


def _worker(devices: int, width: int, ns: list[int], repeats: int, save_dir: str) -> list[dict]:
    assert len(jax.devices()) == devices, jax.devices()
    specs = [None] if devices == 1 else [f"data={devices}", f"data={devices // 2},model=2"]
    model = h.study_mlp(width)
    rows = []
    for n in ns:
        x = h.uniform_inputs(n)
        v = jax.random.normal(jax.random.key(2), (n * 10, PROBES), jnp.float32)
        for spec in specs:
            mesh = None if spec is None else make_mesh(spec)
            data, model_axis = _mesh_shape(mesh)
            op = ntkspec.ntk(model, x, mesh=mesh)
            shape = dict(depth=3, devices_data=data, devices_model=model_axis)
            row = {"devices": devices, "mesh": spec or "single", "width": width, "n": n}
            start = time.perf_counter()
            matvec = h.compile_matvec(op, v)
            dense = h.compile_dense(op)
            row["compile_s"] = time.perf_counter() - start
            kv, k = matvec(op, v), dense(op)
            row["matvec_s"] = h.best_time(matvec, op, v, repeats=repeats if n <= 256 else 1)
            row["dense_s"] = h.best_time(dense, op, repeats=repeats if n <= 256 else 1)
            row["matvec_xla_bytes_per_device"] = h.xla_peak(matvec)
            row["dense_xla_bytes_per_device"] = h.xla_peak(dense)
            row["matvec_model_bytes_per_device"] = memory.matvec_bytes(width, n, probe_block=PROBES, **shape)
            row["dense_model_bytes_per_device"] = memory.exact_kernel_bytes(width, n, **shape)
            name = f"{save_dir}/n{n}_{row['mesh']}"
            np.save(name + "_kv.npy", np.asarray(kv))
            np.save(name + "_k.npy", _sample_rows(np.asarray(k)))
            del kv, k
            row["files"] = name
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _training_step(width: int, n_train: int, mesh):
    """A jit-compiled full-batch Adam step on the study MLP, state placed by `shard_params`."""
    graphdef, params = nnx.split(h.study_mlp(width), nnx.Param)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    x = h.uniform_inputs(n_train)
    y = jax.random.randint(jax.random.key(1), (n_train,), 0, 10)
    if mesh is not None:
        params, opt_state = shard_params(params, mesh), shard_params(opt_state, mesh)
        x, y = shard_batch(x, mesh), shard_batch(y, mesh)

    def loss(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(params, opt_state, x, y):
        grads = jax.grad(loss)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x, y).compile()
    return compiled, (params, opt_state, x, y)


def _memory_check_one(workload: str, width: int, n: int) -> dict:
    """Predicted against measured peak bytes of one workload on one device, in a fresh process:
    build and compile, then the rise of the resident set during the first call plus the bytes of
    the arguments already resident (in a process that has run other programs, buffers freed late
    hide part of the rise)."""
    if workload == "training":
        compiled, args = _training_step(width, n, None)
        predicted = memory.training_bytes(width, n)
    else:
        op = h.study_operator(width, n)
        if workload == "matvec":
            v = jax.random.normal(jax.random.key(2), (n * 10, PROBES), jnp.float32)
            compiled, args = h.compile_matvec(op, v), (op, v)
            predicted = memory.matvec_bytes(width, n, probe_block=PROBES)
        else:
            compiled, args = h.compile_dense(op), (op,)
            predicted = memory.exact_kernel_bytes(width, n)
    resident = h.argument_bytes(*args)  # counted before a donated call consumes them
    measured = h.rss_rise(compiled, *args) + resident
    xla = h.xla_peak(compiled)
    row = {
        "workload": workload,
        "width": width,
        "n": n,
        "predicted_bytes": predicted,
        "measured_rss_bytes": measured,
        "xla_bytes": xla,
        "predicted_over_rss": predicted / measured,
        "predicted_over_xla": predicted / xla,
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


SWEEP_MESHES = ("data=1", "data=2", "data=8", "data=1,model=2", "data=1,model=8", "data=4,model=2")


def _matvec_sweep(widths: list[int], ns: list[int]) -> list[dict]:
    """Compile only (no run): XLA's per-device peak of the matvec against the model over widths,
    batch sizes and meshes of 8 devices."""
    rows = []
    for width in widths:
        model = h.study_mlp(width)
        for n in ns:
            x = h.uniform_inputs(n)
            v = jnp.ones((n * 10, PROBES), jnp.float32)
            for spec in SWEEP_MESHES:
                mesh = make_mesh(spec)
                data, model_axis = _mesh_shape(mesh)
                xla = h.xla_peak(h.compile_matvec(ntkspec.ntk(model, x, mesh=mesh), v))
                predicted = memory.matvec_bytes(
                    width, n, probe_block=PROBES, devices_data=data, devices_model=model_axis
                )
                rows.append(
                    {"width": width, "n": n, "mesh": spec, "xla_bytes": xla, "predicted_bytes": predicted}
                )
    return rows


def _training_sharded(devices: int, width: int, n_train: int) -> list[dict]:
    """XLA's per-device peak of the sharded training step against the model, on each mesh."""
    specs = [None] if devices == 1 else [f"data={devices}", f"data={devices // 2},model=2"]
    rows = []
    for spec in specs:
        mesh = None if spec is None else make_mesh(spec)
        data, model_axis = _mesh_shape(mesh)
        step, _ = _training_step(width, n_train, mesh)
        predicted = memory.training_bytes(width, n_train, devices_data=data, devices_model=model_axis)
        rows.append(
            {
                "devices": devices,
                "mesh": spec or "single",
                "width": width,
                "n_train": n_train,
                "training_xla_bytes_per_device": h.xla_peak(step),
                "training_model_bytes_per_device": predicted,
            }
        )
    return rows


def capacity(
    budgets=(("80 GB", 80 * 10**9), ("24 GB", 24 * 10**9)),
    devices=(1, 2, 4, 8),
    depths=(3, 4),
    n_train: int = 60_000,
    n_ntk: int = 128,
    exact_width: int = 1024,
) -> list[dict]:
    """The memory model's answers: per depth, device memory and device count, the largest width
    for a full-batch Adam step on `n_train` samples and for a matvec (N = `n_ntk`, 32 probes), each
    over every mesh data x model = D, and the largest exact-kernel NTK batch at `exact_width`."""
    rows = []
    for depth in depths:
        for label, budget in budgets:
            for d in devices:
                meshes = [(d // m, m) for m in range(1, d + 1) if d % m == 0]
                row = {"depth": depth, "device_memory": label, "devices": d}
                for workload in ("training", "matvec"):
                    best = max(
                        (
                            memory.largest_width(
                                budget,
                                m,
                                workload=workload,
                                n_train=n_train,
                                n_samples=n_ntk,
                                probe_block=PROBES,
                                depth=depth,
                                devices_data=data,
                            ),
                            f"data={data},model={m}",
                        )
                        for data, m in meshes
                    )
                    row[f"{workload}_width"], row[f"{workload}_mesh"] = best
                row["exact_n"] = memory.largest_ntk_batch(budget, exact_width, depth=depth, devices_data=d)
                rows.append(row)
    return rows


def _spawn(args: list[str], devices: int) -> dict:
    """This module's worker (`args`) in a fresh process on `devices` simulated CPU devices."""
    out = h.spawn(["benchmarks.device_scaling", *args], devices=devices, echo=True)
    if "error" in out:
        sys.exit(f"worker {' '.join(args)} on {devices} devices failed: {out['error']}")
    return out


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def run(devices, width, ns, repeats, check_widths, n_train) -> dict:
    rows, training, max_rss = [], [], {}
    with tempfile.TemporaryDirectory() as save_dir:
        for d in devices:
            common = ["--width", str(width), "--n-train", str(n_train)]
            out = _spawn(
                [
                    "--worker",
                    str(d),
                    *common,
                    "--ns",
                    ",".join(map(str, ns)),
                    "--save-dir",
                    save_dir,
                    "--repeats",
                    str(repeats),
                ],
                d,
            )
            rows += out["rows"]
            max_rss[d] = out["max_rss_bytes"]
            training += out["training"]
        reference = {row["n"]: row["files"] for row in rows if row["devices"] == 1}
        for row in rows:
            ref, name = reference[row["n"]], row.pop("files")
            row["matvec_max_rel_diff_vs_1"] = _relative(np.load(name + "_kv.npy"), np.load(ref + "_kv.npy"))
            row["dense_max_rel_diff_vs_1"] = _relative(np.load(name + "_k.npy"), np.load(ref + "_k.npy"))
    sweep = _spawn(["--sweep"], 8)["sweep"]
    check = [
        _spawn(["--check", f"{workload},{width},{n}"], 1)
        for width in check_widths
        for workload, n in (("matvec", 128), ("exact", 512), ("training", n_train))
    ]
    return {
        "machine": h.machine(),
        "probes": PROBES,
        "rows": rows,
        "training": training,
        "worker_max_rss_bytes": max_rss,
        "matvec_sweep": sweep,
        "check": check,
        "capacity": capacity(n_train=60_000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--ns", default="128,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check-widths", default="256,512,1024")
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--check", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sweep", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--save-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        rows = _worker(
            args.worker, args.width, [int(n) for n in args.ns.split(",")], args.repeats, args.save_dir
        )
        training = _training_sharded(args.worker, args.width, args.n_train)
        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"rows": rows, "training": training, "max_rss_bytes": max_rss}))
        return
    if args.sweep:
        print(json.dumps({"sweep": _matvec_sweep([256, 1024], [128, 512, 1024])}))
        return
    if args.check is not None:
        workload, width, n = args.check.split(",")
        print(json.dumps(_memory_check_one(workload, int(width), int(n))))
        return
    result = run(
        [int(d) for d in args.devices.split(",")],
        args.width,
        [int(n) for n in args.ns.split(",")],
        args.repeats,
        [int(w) for w in args.check_widths.split(",")],
        args.n_train,
    )
    for row in result["rows"]:
        print(
            f"D={row['devices']} {row['mesh']:>14} N={row['n']:>5}: matvec {row['matvec_s'] * 1e3:8.1f} ms, "
            f"dense {row['dense_s']:7.3f} s, max rel diff vs D=1: K V {row['matvec_max_rel_diff_vs_1']:.1e}, "
            f"K {row['dense_max_rel_diff_vs_1']:.1e}"
        )
    for row in result["capacity"]:
        print(
            f"L={row['depth']} {row['device_memory']} D={row['devices']}: width {row['training_width']:,} "
            f"({row['training_mesh']}) trains; matvec to width {row['matvec_width']:,} "
            f"({row['matvec_mesh']}); exact kernel to N = {row['exact_n']:,}"
        )
    h.write_json(args.out, result)


if __name__ == "__main__":
    main()
