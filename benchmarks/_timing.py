"""Timing helpers: warm up (compile) once, then take the best of `repeats` blocked runs."""

from __future__ import annotations

import platform
import time

import jax


def best_time(fn, *args, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` calls of `fn(*args)`, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict:
    """What the figures were measured on."""
    device = jax.devices()[0]
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "device": f"{device.platform}:{device.device_kind}",
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
