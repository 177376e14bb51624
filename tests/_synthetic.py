"""A synthetic sweep store (Zarr v3, the layout written before checksums: a store made before them)
with known scaling laws.

Width (or data size) w, seed s: min test loss = 2 w^-1/2, trace ratio = 1.5 min(1, (w / w*)^-0.7),
effective rank at the minimum = 4 min(w, w*)^0.5, with w* = `transition`; multiplicative log-normal
noise of scale `noise` per run. With `motion`, also how the kernel moves: ‖K − K∞‖/‖K∞‖ = 3 w^-1/2
at initialisation, doubling over the run, A(K, K∞) = 1 − d²/2, 1 − A(K₀, K) and the kernel velocity
∝ w^-1/2, a kernel-regression test error falling from 0.5 to 0.3, a label alignment rising from
0.04 to 0.05 and an eigenvector rotation falling from 0.2 to 0.1 (App. E.3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

ARRAYS = (
    "epoch",
    "train_loss",
    "test_loss",
    "train_accuracy",
    "test_accuracy",
    "trace",
    "trace_stderr",
    "entropy",
    "effective_rank",
    "cosine_entropy",
    "cosine_effective_rank",
)


def curves(width: float, rng: np.random.Generator, n_records: int, transition: float, noise: float):
    """Record arrays of one synthetic run; the test loss is lowest at record 2/3 n_records."""
    jitter = lambda: float(np.exp(noise * rng.standard_normal()))  # noqa: E731
    epoch = np.arange(n_records) * 10.0
    progress = np.linspace(0.0, 1.0, n_records)
    train_loss = 2.0 * np.exp(-6.0 * progress)
    i_min = (2 * n_records) // 3
    floor = 2.0 * width**-0.5 * jitter()
    test_loss = floor + 0.5 * (progress - progress[i_min]) ** 2 * (1 + np.sign(progress - 0.5))
    test_loss += 0.8 * np.clip(progress[i_min] - progress, 0.0, None)
    ratio = 1.5 * min(1.0, (width / transition) ** -0.7) * jitter()
    trace0 = 10.0 * jitter()
    # T grows linearly in ln L until the minimum, so the trace ratio there is `ratio`.
    drop = np.log(train_loss[0]) - np.log(train_loss)
    trace = trace0 * (1.0 + ratio * drop / drop[i_min])
    erank = 4.0 * min(width, transition) ** 0.5 * jitter() * (0.5 + 0.5 * progress / progress[i_min])
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "train_accuracy": 1.0 - 0.4 * train_loss / 2.0,
        "test_accuracy": 0.9 - test_loss / 4.0,
        "trace": trace,
        "trace_stderr": np.zeros(n_records),
        "entropy": np.log(erank),
        "effective_rank": erank,
        "cosine_entropy": np.log(0.8 * erank),
        "cosine_effective_rank": 0.8 * erank,
    }


MOTION = (
    "init_alignment",
    "kernel_velocity",
    "infinite_distance",
    "infinite_alignment",
    "regression_error",
    "label_alignment",
    "eigenvector_rotation",
)


def motion_curves(width: float, rng: np.random.Generator, n_records: int, noise: float):
    """The kernel-motion record arrays of one synthetic run (see the module docstring)."""
    progress = np.linspace(0.0, 1.0, n_records)
    scale = width**-0.5 * float(np.exp(noise * rng.standard_normal()))
    distance = 3.0 * scale * (1.0 + progress)
    velocity = 0.1 * scale * (1.5 - progress)
    velocity[0] = np.nan
    return {
        "init_alignment": 1.0 - 0.5 * (scale * progress) ** 2,
        "kernel_velocity": velocity,
        "infinite_distance": distance,
        "infinite_alignment": 1.0 - 0.5 * distance**2,
        "regression_error": 0.5 - 0.2 * progress,
        "label_alignment": 0.04 + 0.01 * progress,
        "eigenvector_rotation": np.where(progress > 0, 0.2 - 0.1 * progress, np.nan),
    }


def write_sweep(
    path: Path,
    kind: str = "width",
    values=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
    seeds=(0, 1, 2, 3),
    n_records: int = 40,
    transition: float = 700.0,
    noise: float = 0.05,
    motion: bool = False,
) -> Path:
    """Write a sweep; also one diverged run and one still running (both to be skipped). With
    `motion`, the runs also hold the kernel-motion arrays (`MOTION`).

    For kind "data_size" the `values` are training-set sizes (runs `n{size}_s{seed}`), for kind
    "noise" noisy-copy fractions (runs `p{percent}_s{seed}`, curves of width 256); the width is
    then fixed at 256.
    """
    rng = np.random.default_rng(0)
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update(
        {
            "config": {"kind": kind, "dataset": "synthetic", "depth": 3},
            "versions": {"ntkspec": "test"},
            "created": "2026-01-01T00:00:00Z",
        }
    )
    capacity = n_records + 5  # arrays are preallocated; only n_records entries are valid
    runs = [(w, s, "complete") for w in values for s in seeds]
    runs += [(values[-1], max(seeds) + 1, "diverged"), (values[0], max(seeds) + 2, "running")]
    for value, seed, status in runs:
        valid = n_records if status == "complete" else n_records // 4
        width, n_train, fraction = {
            "width": (value, 100, 0.0),
            "data_size": (256, value, 0.0),
            "noise": (256, 100, value),
        }[kind]
        label = {
            "width": f"w{width}",
            "data_size": f"n{n_train}",
            "noise": f"p{round(100 * value)}",
        }
        group = root.create_group(f"{label[kind]}_s{seed}")
        records = curves(width if kind == "noise" else value, rng, n_records, transition, noise)
        if motion:
            records |= motion_curves(width if kind == "noise" else value, rng, n_records, noise)
        if status == "diverged":
            records["test_loss"][valid - 1] = np.nan
        for name in ARRAYS + (MOTION if motion else ()):
            array = group.create_array(
                name,
                shape=(capacity,),
                dtype="float64",
                fill_value=np.nan,
                dimension_names=("record",),
            )
            array[:valid] = records[name][:valid]
        top = group.create_array(
            "top_eigenvalues",
            shape=(capacity, 4),
            dtype="float64",
            fill_value=np.nan,
            dimension_names=("record", "k"),
        )
        method = group.create_array(
            "method", shape=(capacity,), dtype=str, fill_value="", dimension_names=("record",)
        )
        method[:valid] = np.full(valid, "exact")
        top[:valid] = np.outer(records["trace"][:valid], [0.5, 0.2, 0.1, 0.05])
        group.attrs.update(
            {
                "status": status,
                "width": width,
                "depth": 3,
                "seed": seed,
                "dataset": "synthetic",
                "n_train": n_train,
                "noise_fraction": fraction,
                "message": "loss became NaN" if status == "diverged" else "",
                "n_records": valid,
            }
        )
    return path
