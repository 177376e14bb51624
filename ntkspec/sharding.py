"""Device meshes and placements: samples and probes on "data", wide hidden dimensions on "model".

We only place arrays (`jax.device_put` with `NamedSharding`) and constrain intermediates inside
`jit`; XLA's SPMD partitioner inserts the collectives (an all-reduce of J^T v over "data", the
gathers the "model" split needs). Across hosts, call `jax.distributed.initialize()` first: the mesh
then spans every process's devices and the same code runs unchanged.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ntkspec._errors import bad_value

AXES = ("data", "model")
# A parameter leaf at least this large must be split on "model" when that axis has several
# devices; smaller leaves (output biases, a 10-class head) are replicated.
MUST_SHARD_SIZE = 2**16


def make_mesh(spec: str | dict[str, int] | None = None, devices=None) -> Mesh:
    """A ("data", "model") mesh from a spec like "data=4,model=2" (None or "all": all on data).

    An axis left out of the spec gets size 1, except that a lone `model=m` puts the remaining
    devices on "data".
    """
    devices = list(jax.devices() if devices is None else devices)
    if spec is None or spec == "all":
        sizes = {"data": len(devices), "model": 1}
    else:
        sizes = _parse(spec) if isinstance(spec, str) else dict(spec)
        unknown = set(sizes) - set(AXES)
        if unknown:
            raise bad_value("mesh", repr(spec), f"axes among {AXES}, e.g. 'data=4,model=2'")
        if "data" not in sizes:
            sizes["data"] = len(devices) // sizes.get("model", 1)
        sizes.setdefault("model", 1)
    total = sizes["data"] * sizes["model"]
    if total < 1 or total > len(devices) or min(sizes.values()) < 1:
        raise bad_value(
            "mesh",
            repr(spec),
            f"axis sizes whose product is at most {len(devices)}, the number of devices",
            f"Devices: {len(devices)}.",
        )
    grid = np.array(devices[:total]).reshape(sizes["data"], sizes["model"])
    return Mesh(grid, AXES)


def _parse(spec: str) -> dict[str, int]:
    sizes = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if not value.strip().isdigit():
            raise bad_value("mesh", repr(spec), "'axis=size' pairs, e.g. 'data=4,model=2'")
        sizes[name.strip()] = int(value)
    return sizes


def param_spec(shape: tuple[int, ...], mesh: Mesh, name: str = "params") -> P:
    """Where one parameter leaf goes: its last axis on "model" if that divides, else its first."""
    m = mesh.shape["model"]
    if m == 1 or len(shape) == 0:
        return P()
    for axis in (len(shape) - 1, 0):
        if shape[axis] % m == 0:
            spec = [None] * len(shape)
            spec[axis] = "model"
            return P(*spec)
    if math.prod(shape) >= MUST_SHARD_SIZE:
        raise bad_value(
            name,
            f"a parameter of shape {shape}",
            f"a first or last dimension divisible by the model axis size {m}",
            f"Choose widths that are multiples of {m}, or a mesh with fewer devices "
            "on 'model' (e.g. --mesh data=N,model=1).",
        )
    return P()


def shard_params(tree, mesh: Mesh):
    """Place every leaf of a parameter (or optimizer-state) pytree by `param_spec`."""

    def place(path, leaf):
        if not hasattr(leaf, "shape"):
            return leaf
        spec = param_spec(tuple(leaf.shape), mesh, "params" + jax.tree_util.keystr(path))
        return jax.device_put(leaf, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map_with_path(place, tree)


def shard_batch(x, mesh: Mesh):
    """Samples on "data" when the batch divides evenly; replicated otherwise (inside `jit`, the
    operator pads its sample chunks to a multiple of the data axis and constrains those)."""
    spec = P("data") if x.shape[0] % mesh.shape["data"] == 0 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))


def constrain_samples(array, mesh: Mesh | None, axis: int = 0):
    """Inside `jit`: ask for `axis` of `array` to be split over "data"."""
    if mesh is None:
        return array
    spec = [None] * array.ndim
    spec[axis] = "data"
    return jax.lax.with_sharding_constraint(array, NamedSharding(mesh, P(*spec)))
