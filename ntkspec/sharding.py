"""Device meshes and placements: samples and probes on "data", wide hidden dimensions on "model".

We only place arrays (`jax.device_put` with `NamedSharding`) and constrain intermediates inside
`jit`; XLA's SPMD partitioner inserts the collectives (an all-reduce of J^T v over "data", the
gathers the "model" split needs). Across hosts, call `jax.distributed.initialize()` first: the mesh
then spans every process's devices and the same code runs unchanged.

Any mesh with "data" and "model" axes works (`jax.make_mesh`, `Mesh(...)`, `make_mesh`), and the one
set with `jax.set_mesh` is the default. ntkspec computes on its Auto-typed view (`as_mesh`): its
programs, and the models they call, are not written for sharding in types, so Explicit axes are
turned to Auto, over the same devices, and XLA partitions the programs from the placements.
Entry points run under `computes_on`, which makes that view the context mesh while they run if
the caller has set another (an Explicit one, say).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
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


def as_mesh(mesh: Mesh | None) -> Mesh | None:
    """The mesh ntkspec computes on for a `mesh` argument: the same devices and axes, all Auto.

    `mesh` is any `jax.sharding.Mesh` with axes "data" and "model" (other axes, if any, hold
    copies), with Explicit or Auto axis types; None means the mesh set with `jax.set_mesh`, or
    None (one device) when there is none.
    """
    got = "a mesh"
    if mesh is None:
        if jax.sharding.get_abstract_mesh().empty:
            return None
        mesh = jax.sharding.get_mesh()
        if mesh.empty:
            return None
        got = "None, and the mesh set with jax.set_mesh is a mesh"
    expected = f"a jax.sharding.Mesh with axes {AXES[0]!r} and {AXES[1]!r}"
    fix = (
        "Build one with jax.make_mesh((4, 2), ('data', 'model')) or "
        "ntkspec.sharding.make_mesh('data=4,model=2')."
    )
    if not isinstance(mesh, Mesh):
        raise bad_value("mesh", f"an object of type {type(mesh).__name__}", expected, fix)
    if not set(AXES) <= set(mesh.axis_names):
        raise bad_value("mesh", f"{got} with axes {mesh.axis_names}", expected, fix)
    return mesh.update(axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def computes_on(mesh_of: Callable[..., Mesh | None]):
    """Decorator for entry points: run on the mesh `mesh_of(*args, **kwargs)` gives (from `as_mesh`).

    Arrays among the arguments that live on another mesh are first copied onto it, replicated. If
    the caller has set another mesh with `jax.set_mesh` (JAX traces every program there against
    it), the function runs under `jax.set_mesh(mesh)` instead, and an array it returns comes back
    replicated on the caller's mesh. Outside such a context, and for `mesh_of` None, it just runs.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            mesh = mesh_of(*args, **kwargs)
            if mesh is None:
                return fn(*args, **kwargs)
            args, kwargs = _onto((args, kwargs), mesh)
            caller = jax.sharding.get_abstract_mesh()
            if caller.empty or caller == mesh.abstract_mesh:
                return fn(*args, **kwargs)
            home = jax.sharding.get_mesh()
            with jax.set_mesh(mesh):
                out = fn(*args, **kwargs)
            if isinstance(out, jax.Array) and not home.empty:
                out = jax.device_put(out, NamedSharding(home, P()))
            return out

        return run

    return decorate


def _onto(tree, mesh: Mesh):
    """`tree` with its concrete arrays that are placed on another mesh copied onto `mesh`, replicated."""

    def elsewhere(leaf) -> bool:
        return (
            isinstance(leaf, jax.Array)
            and not isinstance(leaf, jax.core.Tracer)
            and isinstance(leaf.sharding, NamedSharding)
            and leaf.sharding.mesh != mesh
        )

    if not any(elsewhere(leaf) for leaf in jax.tree.leaves(tree)):
        return tree
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda leaf: jax.device_put(leaf, replicated) if elsewhere(leaf) else leaf, tree)


def _required(mesh: Mesh | None) -> Mesh:
    auto = as_mesh(mesh)
    if auto is None:
        raise bad_value("mesh", None, "a jax.sharding.Mesh (none is set with jax.set_mesh)")
    return auto


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


def shard_params(tree, mesh: Mesh, *, leading: int = 0):
    """Place every leaf of a parameter (or optimizer-state) pytree by `param_spec`, on `as_mesh(mesh)`.

    `leading` axes in front of each leaf's own (an ensemble axis) are not split."""
    mesh = _required(mesh)

    def place(path, leaf):
        if not hasattr(leaf, "shape"):
            return leaf
        spec = param_spec(tuple(leaf.shape[leading:]), mesh, "params" + jax.tree_util.keystr(path))
        return jax.device_put(leaf, NamedSharding(mesh, P(*[None] * leading, *spec)))

    return jax.tree_util.tree_map_with_path(place, tree)


def shard_batch(x, mesh: Mesh, *, leading: int = 0):
    """Samples (axis `leading`; the axes before it, e.g. an ensemble axis, are not split) on "data"
    when they divide evenly; replicated otherwise (inside `jit`, the operator pads its sample chunks
    to a multiple of the data axis and constrains those). On `as_mesh(mesh)`."""
    mesh = _required(mesh)
    spec = P(*[None] * leading, "data") if x.shape[leading] % mesh.shape["data"] == 0 else P()
    return jax.device_put(x, NamedSharding(mesh, spec))


def constrain_samples(array, mesh: Mesh | None, axis: int = 0):
    """Inside `jit`: ask for `axis` of `array` to be split over "data"."""
    if mesh is None:
        return array
    spec = [None] * array.ndim
    spec[axis] = "data"
    return jax.lax.with_sharding_constraint(array, NamedSharding(mesh, P(*spec)))
