"""Memory model of the study's MLPs: bytes per device for training and for the NTK, and what fits.

The network is `depth` Dense layers d_in -> w -> ... -> w -> C (ReLU between them), with

    P(w, L) = (d_in + 1) w + (L - 2)(w + 1) w + (w + 1) C

parameters. Every figure is the peak bytes held by one device of a ("data", "model") mesh, with the
arrays placed as `ntkspec.sharding` places them: each parameter leaf (and each optimizer-state leaf)
split on "model" by `sharding.param_spec`, samples split on "data". Live-buffer counts are the
ones XLA's buffer assignment gives for the compiled programs (checked by
`benchmarks/device_scaling.py` against `Compiled.memory_analysis()` and the process RSS):

training step (Adam, full batch of n samples, state updated in place)
    4 P_dev (params, gradients, two moments) + n_dev (d_in + 2 (L-1) w + 3 C) activations
    (the input, two arrays per hidden layer, e.g. the ReLU output and its cotangent; logits,
    softmax and their cotangent). The activations are split on "data" only: with column-split
    weights the partitioner gathers each hidden activation whole for the next layer;
matvec K V for a block of k probes (`NTKOperator.matvec`)
    P_dev + c k P_dev, copies of the parameter-shaped J^T V: c = 1, plus 1 when there are several
    sample chunks (the scan's carry beside the chunk's term), plus 1 when "data" > 1 (the
    all-reduce over "data"; probes are not split over devices) + s_dev (sum_l d_l + t k (L-1) w_dev)
    activations of one sample chunk (primal, and t = 2 tangents per hidden layer and probe; t = 4
    with a single chunk, where XLA overlaps the reverse and the forward pass; when "model" > 1,
    plus s_dev k w for one layer's tangents gathered whole) + 2 N C k (V and K V, replicated);
exact kernel (`NTKOperator.dense()`, structured path)
    c (N C)^2 / data with c = 4 (the accumulator, one layer's Delta Delta^T, its product with the
    Gram of the inputs, the output; rows on "data", assuming N C divides by it: uneven rows stay
    replicated) or c = 5 when "model" > 1 (Delta Delta^T contracts over the split features:
    partial sums, then an all-reduce) + N C sum_l d_out,l (the Delta_l) + N sum_l d_in,l (the
    A_l) + P_dev. Splitting on "model" does not shrink it.

Here P_dev is the parameter count on one device, w_dev = w / model, n_dev = ceil(n / data),
s_dev = ceil(chunk / data). `largest_width` and `largest_ntk_batch` invert these by bisection.
Float32 (4 bytes) unless `itemsize` says otherwise. The counts are XLA:CPU's; a GPU compiler
schedules and fuses differently, so treat the figures as estimates (benchmarks/RESULTS.md gives the
measured agreement).
"""

from __future__ import annotations

import math

from jax.sharding import AbstractMesh

from ntkspec._errors import bad_value
from ntkspec.sharding import AXES, param_spec

FLOAT32 = 4
WORKLOADS = ("training", "matvec", "exact")
_MAX_WIDTH = 2**40


def _check(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise bad_value(name, repr(value), f"an integer >= {minimum}")


def _sizes(width: int, depth: int, d_in: int, n_outputs: int) -> list[int]:
    _check("width", width)
    _check("depth", depth, 2)
    _check("d_in", d_in)
    _check("n_outputs", n_outputs)
    return [d_in] + [width] * (depth - 1) + [n_outputs]


def mlp_parameter_count(width: int, depth: int = 3, d_in: int = 784, n_outputs: int = 10) -> int:
    """P(w, L): weights and biases of `depth` Dense layers d_in -> w -> ... -> w -> n_outputs."""
    sizes = _sizes(width, depth, d_in, n_outputs)
    return sum((a + 1) * b for a, b in zip(sizes, sizes[1:], strict=False))


def _parameters_per_device(sizes: list[int], devices_model: int) -> int:
    """Parameter entries on one device when every leaf is placed by `sharding.param_spec`."""
    mesh = AbstractMesh((1, devices_model), AXES)
    total = 0
    for a, b in zip(sizes, sizes[1:], strict=False):
        for shape in ((a, b), (b,)):
            spec = param_spec(shape, mesh, f"a parameter of the width-{sizes[1]} MLP")
            split = any(axis == "model" for axis in spec)
            total += math.prod(shape) // (devices_model if split else 1)
    return total


def _mesh(devices_data: int, devices_model: int) -> None:
    _check("devices_data", devices_data)
    _check("devices_model", devices_model)


def training_bytes(
    width: int,
    n_train: int,
    *,
    depth: int = 3,
    d_in: int = 784,
    n_outputs: int = 10,
    devices_data: int = 1,
    devices_model: int = 1,
    itemsize: int = FLOAT32,
) -> int:
    """Peak bytes per device of one full-batch Adam training step on `n_train` samples.

    Parameters, gradients and both Adam moments (4 P, split on "model"), plus the activations the
    backward pass keeps (split over "data" only): per sample the input, two arrays per hidden
    layer, and logits, softmax and their cotangent.
    """
    sizes = _sizes(width, depth, d_in, n_outputs)
    _check("n_train", n_train)
    _mesh(devices_data, devices_model)
    state = 4 * _parameters_per_device(sizes, devices_model)
    n_dev = -(-n_train // devices_data)
    per_sample = d_in + 2 * (depth - 1) * width + 3 * n_outputs
    return itemsize * (state + n_dev * per_sample)


def matvec_bytes(
    width: int,
    n_samples: int,
    *,
    probe_block: int = 32,
    chunk_size: int | None = None,
    depth: int = 3,
    d_in: int = 784,
    n_outputs: int = 10,
    devices_data: int = 1,
    devices_model: int = 1,
    itemsize: int = FLOAT32,
) -> int:
    """Peak bytes per device of one `NTKOperator.matvec` on a block of `probe_block` probes.

    P_dev (params) + c * probe_block * P_dev (J^T V; c = 1, + 1 with several sample chunks, + 1
    when "data" > 1) + one sample chunk's activations with its probe_block tangents + V and K V
    + the inputs x and, when N is not a multiple of the chunk, their padded copy.
    `chunk_size` defaults as in `ntkspec.ntk` (min(N, 256)).
    """
    sizes = _sizes(width, depth, d_in, n_outputs)
    _check("n_samples", n_samples)
    _check("probe_block", probe_block)
    _mesh(devices_data, devices_model)
    chunk = min(n_samples, 256) if chunk_size is None else chunk_size
    _check("chunk_size", chunk)
    params = _parameters_per_device(sizes, devices_model)
    several = n_samples > chunk
    copies = 1 + several + (devices_data > 1)
    s_dev = -(-chunk // devices_data)
    w_dev = -(-width // devices_model)
    tangents = 2 if several else 4  # one chunk: the reverse and forward passes' tangents overlap
    activations = s_dev * (sum(sizes) + tangents * probe_block * (depth - 1) * w_dev)
    if devices_model > 1:  # one layer's probe tangents gathered whole across "model"
        activations += s_dev * probe_block * width
    vectors = 2 * n_samples * n_outputs * probe_block
    padded = -(-n_samples // chunk) * chunk
    rows = n_samples + (padded if padded != n_samples else 0)
    inputs = rows * d_in // (devices_data if n_samples % devices_data == 0 else 1)
    return itemsize * (params + copies * probe_block * params + activations + vectors + inputs)


def exact_kernel_bytes(
    width: int,
    n_samples: int,
    *,
    depth: int = 3,
    d_in: int = 784,
    n_outputs: int = 10,
    devices_data: int = 1,
    devices_model: int = 1,
    itemsize: int = FLOAT32,
) -> int:
    """Peak bytes per device of the structured exact kernel `NTKOperator.dense()`.

    c (N C)^2 / data (kernel accumulator, Delta_l Delta_l^T, its product with A_l A_l^T + 1, the
    output; rows on "data"; c = 4, or 5 when "model" > 1 for the all-reduce of Delta_l Delta_l^T)
    + the factors Delta_l (N C d_out,l) and A_l (N d_in,l) + the params.
    """
    sizes = _sizes(width, depth, d_in, n_outputs)
    _check("n_samples", n_samples)
    _mesh(devices_data, devices_model)
    rows = n_samples * n_outputs
    copies = 4 + (devices_model > 1)  # a "model" split adds the all-reduce of Delta_l Delta_l^T
    kernel = copies * -(-(rows * rows) // devices_data)
    factors = rows * sum(sizes[1:]) + n_samples * sum(sizes[:-1])
    return itemsize * (kernel + factors + _parameters_per_device(sizes, devices_model))


def _largest(fits, start: int, step: int, limit: int) -> int:
    """Largest multiple of `step` in [start, limit] with fits(value), fits monotone; 0 if none."""
    if not fits(start):
        return 0
    low, high = start // step, 2 * (start // step)
    while high * step <= limit and fits(high * step):
        low, high = high, 2 * high
    high = min(high, limit // step + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid * step) else (low, mid)
    return low * step


def _layout(depth: int, d_in: int, n_outputs: int, devices_data: int, devices_model: int, itemsize: int):
    """The keyword arguments shared by the byte counters."""
    return dict(
        depth=depth,
        d_in=d_in,
        n_outputs=n_outputs,
        devices_data=devices_data,
        devices_model=devices_model,
        itemsize=itemsize,
    )


def largest_width(
    device_bytes: int,
    devices_model: int = 1,
    *,
    workload: str = "training",
    n_train: int = 60_000,
    n_samples: int = 128,
    probe_block: int = 32,
    depth: int = 3,
    d_in: int = 784,
    n_outputs: int = 10,
    devices_data: int = 1,
    itemsize: int = FLOAT32,
) -> int:
    """Largest width (a multiple of `devices_model`, so that every layer splits) whose `workload`
    fits in `device_bytes` per device; 0 if none does.

    workload: "training" (`training_bytes` on `n_train` samples), "matvec" (`matvec_bytes` for the
    NTK batch of `n_samples` and `probe_block` probes) or "exact" (`exact_kernel_bytes`).
    """
    if workload not in WORKLOADS:
        raise bad_value("workload", repr(workload), f"one of {WORKLOADS}")
    _check("device_bytes", device_bytes)
    common = _layout(depth, d_in, n_outputs, devices_data, devices_model, itemsize)

    def cost(width: int) -> int:
        if workload == "training":
            return training_bytes(width, n_train, **common)
        if workload == "matvec":
            return matvec_bytes(width, n_samples, probe_block=probe_block, **common)
        return exact_kernel_bytes(width, n_samples, **common)

    _mesh(devices_data, devices_model)
    return _largest(lambda w: cost(w) <= device_bytes, devices_model, devices_model, _MAX_WIDTH)


def largest_ntk_batch(
    device_bytes: int,
    width: int,
    *,
    method: str = "exact",
    probe_block: int = 32,
    depth: int = 3,
    d_in: int = 784,
    n_outputs: int = 10,
    devices_data: int = 1,
    devices_model: int = 1,
    itemsize: int = FLOAT32,
) -> int:
    """Largest NTK batch N (samples; the kernel has N C rows) for which `method` fits in
    `device_bytes` per device: "exact" (`exact_kernel_bytes`) or "matvec" (`matvec_bytes`, one
    block of probes; a Lanczos basis or other estimator state is not included). 0 if none fits."""
    if method not in ("exact", "matvec"):
        raise bad_value("method", repr(method), "'exact' or 'matvec'")
    _check("device_bytes", device_bytes)
    common = _layout(depth, d_in, n_outputs, devices_data, devices_model, itemsize)

    def cost(n: int) -> int:
        if method == "exact":
            return exact_kernel_bytes(width, n, **common)
        return matvec_bytes(width, n, probe_block=probe_block, **common)

    _sizes(width, depth, d_in, n_outputs)
    _mesh(devices_data, devices_model)
    return _largest(lambda n: cost(n) <= device_bytes, 1, 1, _MAX_WIDTH)
