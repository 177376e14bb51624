"""Find the Dense and convolution layers of any JAX model, and run it with their inputs recorded and
outputs perturbed.

The structured exact kernel needs, for every layer z = a W (+ b), the layer input a and the
sensitivity delta = df/dz. Rather than asking users to rewrite their model, we read its jaxpr: a
`dot_general` whose right operand is a 2-D parameter leaf used nowhere else, contracting the last axis
of a per-sample (1, d_in) input, is a Dense layer; a `conv_general_dilated` of a per-sample input by
a parameter leaf used nowhere else, without feature or batch groups, is a convolution; a 1-D
parameter used only by an `add` onto that layer's output, broadcast along its last axis (a view of
shape (1, ..., 1, d_out)), and nowhere else, is its bias. An interpreter then evaluates the jaxpr
with `z + e` in place of `z` for zero perturbations e, so delta = df/de by reverse mode. Everything
else (LayerNorm scales, tied weights, grouped convolutions, ...) is left to the generic path.

This is the "structured derivatives" idea of Novak, Sohl-Dickstein & Schoenholz, "Fast finite width
neural tangent kernel" (ICML 2022), restricted to the Dense and convolution rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import jax
import jax.extend.core as jcore

_CALLS = ("jit", "pjit", "closed_call", "core_call")
_VIEWS = ("reshape", "broadcast_in_dim", "expand_dims")
_LAYERS = ("dot_general", "conv_general_dilated")


@dataclasses.dataclass(frozen=True)
class DenseLayer:
    """One Dense layer found in the jaxpr: indices of its weight (and bias) among the param leaves.

    `position` numbers the layer among all candidate layers (Dense or convolution) in evaluation order;
    `transposed` says the weight is stored (d_out, d_in) rather than (d_in, d_out).
    """

    position: int
    weight: int
    bias: int | None
    d_in: int
    d_out: int
    transposed: bool


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolution found in the jaxpr: indices of its kernel (and bias) among the param leaves,
    and the geometry `jax.lax.conv_general_dilated` was called with (padding explicit; `lhs_spec` and
    `out_spec` as in its `ConvDimensionNumbers`; `filter_shape` in the order of the spatial axes;
    `out_shape` the output's shape for one sample).
    """

    position: int
    weight: int
    bias: int | None
    filter_shape: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    lhs_spec: tuple[int, ...]
    out_spec: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Structure:
    """The Dense layers and convolutions of a model and the parameter leaves that need the generic path."""

    layers: tuple[DenseLayer, ...]
    rest: tuple[int, ...]
    convs: tuple[ConvLayer, ...] = ()
    convolves: bool = False  # any convolution, structured or not (control-flow bodies included)

    @property
    def structured(self) -> frozenset[int]:
        layers = self.layers + self.convs
        weights = [layer.weight for layer in layers]
        return frozenset(weights + [layer.bias for layer in layers if layer.bias is not None])

    def generic(self, convs: Sequence[ConvLayer]) -> Structure:
        """This structure with `convs` left to the generic path."""
        moved = [i for conv in convs for i in (conv.weight, conv.bias) if i is not None]
        kept = tuple(conv for conv in self.convs if conv not in convs)
        return dataclasses.replace(self, rest=tuple(sorted(self.rest + tuple(moved))), convs=kept)


class _Walker:
    """Evaluates a jaxpr eqn by eqn (inlining `jit` calls), tracking where parameters flow.

    `origin` maps a variable to ("param", leaf), ("view", leaf) (a reshape or broadcast of a 1-D
    leaf) or ("layer", layer). `uses[leaf]` lists how each parameter leaf is used; `layers[i]` holds
    the class of the i-th candidate layer in evaluation order (`DenseLayer` or `ConvLayer`), its
    fields after `position`, `weight` and `bias`, and its weight leaf. The order is deterministic, so a second
    walk with perturbations finds the same numbering.
    """

    def __init__(self, perturbations: dict[int, jax.Array] | None = None):
        self.perturbations = perturbations or {}
        self.origin: dict = {}
        self.uses: dict[int, list] = {}
        self.layer_uses: dict[int, int] = {}
        self.layers: list[tuple[type, tuple, int]] = []
        self.inputs: dict[int, jax.Array] = {}

    def run(self, jaxpr: jcore.Jaxpr, consts: Sequence, args: Sequence) -> list:
        env: dict = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = value
        for var, value in zip(jaxpr.invars, args, strict=True):
            env[var] = value
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            outvals = self._eqn(eqn, invals)
            for var, value in zip(eqn.outvars, outvals, strict=True):
                if not isinstance(var, jcore.DropVar):
                    env[var] = value
        return [read(v) for v in jaxpr.outvars]

    def _use(self, leaf: int, kind: tuple) -> None:
        self.uses.setdefault(leaf, []).append(kind)

    def _eqn(self, eqn, invals: list) -> list:
        name = eqn.primitive.name
        origins = [self.origin.get(v) if not isinstance(v, jcore.Literal) else None for v in eqn.invars]
        if name in _CALLS:
            return self._call(eqn, invals, origins)
        layer = self._layer_match(eqn, origins)
        handled: set[int] = set()
        if layer is not None:
            handled.add(1)
        elif name in _VIEWS and origins[0] is not None and origins[0][0] in ("param", "view"):
            leaf = origins[0][1]
            if eqn.invars[0].aval.ndim == 1 or origins[0][0] == "view":
                self.origin[eqn.outvars[0]] = ("view", leaf)
                handled.add(0)
        elif name == "add":
            handled |= self._bias_match(eqn, origins)
        for position, origin in enumerate(origins):
            if origin is None or position in handled:
                continue
            if origin[0] == "layer":
                self.layer_uses[origin[1]] = self.layer_uses.get(origin[1], 0) + 1
            else:
                self._use(origin[1], ("other",))

        with eqn.ctx.manager:
            outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        outvals = outvals if eqn.primitive.multiple_results else [outvals]
        if layer is not None:
            self.inputs[layer] = invals[0]
            if layer in self.perturbations:
                outvals = [outvals[0] + self.perturbations[layer]]
            self.origin[eqn.outvars[0]] = ("layer", layer)
        return outvals

    def _call(self, eqn, invals: list, origins: list) -> list:
        closed = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
        inner = closed.jaxpr if hasattr(closed, "jaxpr") else closed
        consts = closed.consts if hasattr(closed, "consts") else ()
        for var, origin in zip(inner.invars, origins, strict=True):
            if origin is not None:
                self.origin[var] = origin
        outvals = self.run(inner, consts, invals)
        for outer, var in zip(eqn.outvars, inner.outvars, strict=True):
            if not isinstance(var, jcore.Literal) and var in self.origin:
                self.origin[outer] = self.origin[var]
        return outvals

    def _layer_match(self, eqn, origins: list) -> int | None:
        if eqn.primitive.name not in _LAYERS or origins[1] is None or origins[1][0] != "param":
            return None
        if eqn.primitive.name == "dot_general":
            found = self._dense_fields(eqn)
        else:
            found = self._conv_fields(eqn)
        if found is None:
            return None
        leaf = origins[1][1]
        layer = len(self.layers)
        self.layers.append((*found, leaf))
        self._use(leaf, ("weight", layer))
        return layer

    @staticmethod
    def _dense_fields(eqn) -> tuple | None:
        lhs, rhs = (v.aval for v in eqn.invars)
        (contract_lhs, contract_rhs), (batch_lhs, _) = eqn.params["dimension_numbers"]
        if (
            lhs.ndim != 2
            or rhs.ndim != 2
            or lhs.shape[0] != 1
            or batch_lhs
            or tuple(contract_lhs) != (1,)
            or tuple(contract_rhs) not in ((0,), (1,))
        ):
            return None
        return DenseLayer, (lhs.shape[1], rhs.shape[1 - contract_rhs[0]], contract_rhs[0] == 1)

    @staticmethod
    def _conv_fields(eqn) -> tuple | None:
        params = eqn.params
        lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
        lhs, rhs = (v.aval for v in eqn.invars)
        if (
            params["feature_group_count"] != 1
            or params["batch_group_count"] != 1
            or lhs.shape[lhs_spec[0]] != 1
        ):
            return None
        fields = (
            tuple(rhs.shape[axis] for axis in rhs_spec[2:]),
            tuple(params["window_strides"]),
            tuple(tuple(pad) for pad in params["padding"]),
            tuple(params["lhs_dilation"]),
            tuple(params["rhs_dilation"]),
            tuple(lhs_spec),
            tuple(out_spec),
            tuple(eqn.outvars[0].aval.shape),
        )
        return ConvLayer, fields

    def _bias_match(self, eqn, origins: list) -> set[int]:
        for layer_at, view_at in ((0, 1), (1, 0)):
            layer, view = origins[layer_at], origins[view_at]
            if layer and view and layer[0] == "layer" and view[0] == "view":
                out, shape = eqn.outvars[0].aval, eqn.invars[view_at].aval.shape
                if shape[-1:] == out.shape[-1:] and all(size == 1 for size in shape[:-1]):
                    self.layer_uses[layer[1]] = self.layer_uses.get(layer[1], 0) + 1
                    self._use(view[1], ("bias", layer[1]))
                    return {layer_at, view_at}
        return set()


def primitives(jaxpr: jcore.Jaxpr) -> Iterator[str]:
    """Names of the primitives of `jaxpr`, those of the jaxprs in its equations' parameters (calls,
    control flow) included."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jcore.Jaxpr):
                    yield from primitives(inner)


def convolves(jaxpr: jcore.Jaxpr) -> bool:
    """Whether `jaxpr` has a convolution anywhere (calls and control-flow bodies included)."""
    return "conv_general_dilated" in set(primitives(jaxpr))


def _closed_jaxpr(fn, leaves: Sequence, *args) -> jcore.ClosedJaxpr:
    return jax.make_jaxpr(fn)(list(leaves), *args)


def find_structure(fn, leaves: Sequence, *args) -> Structure:
    """Dense layers of `fn(leaves, *args)` for one sample; `args` hold the batch-of-one input."""
    closed = _closed_jaxpr(fn, leaves, *args)
    walker = _Walker()
    n = len(leaves)
    for i, var in enumerate(closed.jaxpr.invars[:n]):
        walker.origin[var] = ("param", i)
    jax.eval_shape(
        lambda *flat: walker.run(closed.jaxpr, closed.consts, flat), *jax.tree.leaves((list(leaves), *args))
    )
    layers = []
    for index, (kind, fields, leaf) in enumerate(walker.layers):
        if walker.uses.get(leaf) != [("weight", index)]:
            continue
        bias = None
        if walker.layer_uses.get(index) == 1:
            bias = next((b for b, uses in walker.uses.items() if uses == [("bias", index)]), None)
        layers.append(kind(index, leaf, bias, *fields))
    dense = tuple(layer for layer in layers if isinstance(layer, DenseLayer))
    convs = tuple(layer for layer in layers if isinstance(layer, ConvLayer))
    structured = Structure(dense, (), convs).structured
    rest = tuple(i for i in range(n) if i not in structured)
    return Structure(dense, rest, convs, convolves(closed.jaxpr))


def perturbed_call(
    fn, leaves: Sequence, args: tuple, structure: Structure, perturbations: Sequence[jax.Array]
):
    """Evaluate `fn(leaves, *args)` with `perturbations[k]` added to the output of the k-th layer of
    `structure.layers + structure.convs`.

    Returns the outputs and the inputs a of those layers, in that order.
    """
    layers = structure.layers + structure.convs
    closed = _closed_jaxpr(fn, leaves, *args)
    walker = _Walker({layer.position: e for layer, e in zip(layers, perturbations, strict=True)})
    for i, var in enumerate(closed.jaxpr.invars[: len(leaves)]):
        walker.origin[var] = ("param", i)
    (out,) = walker.run(closed.jaxpr, closed.consts, jax.tree.leaves((list(leaves), *args)))
    return out, [walker.inputs[layer.position] for layer in layers]
