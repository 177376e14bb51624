"""Find the Dense layers of any JAX model, and run it with their inputs recorded and outputs perturbed.

The structured exact kernel needs, for every Dense layer z = a W (+ b), the layer input a and the
sensitivity delta = df/dz. Rather than asking users to rewrite their model, we read its jaxpr: a
`dot_general` whose right operand is a 2-D parameter leaf used nowhere else, contracting the last axis
of a per-sample (1, d_in) input, is a Dense layer; a 1-D parameter used only by a broadcast `add` onto
that layer's output (and nowhere else) is its bias. An interpreter then evaluates the jaxpr with
`z + e` in place of `z` for zero perturbations e, so delta = df/de by reverse mode. Everything else
(convolutions, LayerNorm scales, tied weights, ...) is left to the generic path.

This is the "structured derivatives" idea of Novak, Sohl-Dickstein & Schoenholz, "Fast finite width
neural tangent kernel" (ICML 2022), restricted to the Dense rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.extend.core as jcore

_CALLS = ("jit", "pjit", "closed_call", "core_call")
_VIEWS = ("reshape", "broadcast_in_dim", "expand_dims")


@dataclasses.dataclass(frozen=True)
class DenseLayer:
    """One Dense layer found in the jaxpr: indices of its weight (and bias) among the param leaves.

    `position` numbers the layer among all candidate `dot_general`s in evaluation order;
    `transposed` says the weight is stored (d_out, d_in) rather than (d_in, d_out).
    """

    position: int
    weight: int
    bias: int | None
    d_in: int
    d_out: int
    transposed: bool


@dataclasses.dataclass(frozen=True)
class Structure:
    """The Dense layers of a model and the parameter leaves that need the generic path."""

    layers: tuple[DenseLayer, ...]
    rest: tuple[int, ...]

    @property
    def structured(self) -> frozenset[int]:
        leaves = [layer.weight for layer in self.layers]
        leaves += [layer.bias for layer in self.layers if layer.bias is not None]
        return frozenset(leaves)


class _Walker:
    """Evaluates a jaxpr eqn by eqn (inlining `jit` calls), tracking where parameters flow.

    `origin` maps a variable to ("param", leaf), ("view", leaf) (a reshape or broadcast of a 1-D
    leaf) or ("dense", layer). `uses[leaf]` lists how each parameter leaf is used; `layers[i]` holds
    the (weight leaf, d_in, d_out, transposed) of the i-th candidate Dense layer in evaluation order, which is
    deterministic, so a second walk with perturbations finds the same numbering.
    """

    def __init__(self, perturbations: dict[int, jax.Array] | None = None):
        self.perturbations = perturbations or {}
        self.origin: dict = {}
        self.uses: dict[int, list] = {}
        self.dense_uses: dict[int, int] = {}
        self.layers: list[tuple[int, int, int, bool]] = []
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
        layer = self._dense_match(eqn, origins)
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
            if origin[0] == "dense":
                self.dense_uses[origin[1]] = self.dense_uses.get(origin[1], 0) + 1
            else:
                self._use(origin[1], ("other",))

        with eqn.ctx.manager:
            outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
        outvals = outvals if eqn.primitive.multiple_results else [outvals]
        if layer is not None:
            self.inputs[layer] = invals[0]
            if layer in self.perturbations:
                outvals = [outvals[0] + self.perturbations[layer]]
            self.origin[eqn.outvars[0]] = ("dense", layer)
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

    def _dense_match(self, eqn, origins: list) -> int | None:
        if eqn.primitive.name != "dot_general" or origins[1] is None or origins[1][0] != "param":
            return None
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
        leaf = origins[1][1]
        layer = len(self.layers)
        self.layers.append((leaf, lhs.shape[1], rhs.shape[1 - contract_rhs[0]], contract_rhs[0] == 1))
        self._use(leaf, ("weight", layer))
        return layer

    def _bias_match(self, eqn, origins: list) -> set[int]:
        for dense_at, view_at in ((0, 1), (1, 0)):
            dense, view = origins[dense_at], origins[view_at]
            if dense and view and dense[0] == "dense" and view[0] == "view":
                out = eqn.outvars[0].aval
                if eqn.invars[view_at].aval.shape[-1:] == out.shape[-1:]:
                    self.dense_uses[dense[1]] = self.dense_uses.get(dense[1], 0) + 1
                    self._use(view[1], ("bias", dense[1]))
                    return {dense_at, view_at}
        return set()


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
    for index, (leaf, d_in, d_out, transposed) in enumerate(walker.layers):
        if walker.uses.get(leaf) != [("weight", index)]:
            continue
        bias = None
        if walker.dense_uses.get(index) == 1:
            bias = next((b for b, uses in walker.uses.items() if uses == [("bias", index)]), None)
        layers.append(DenseLayer(index, leaf, bias, d_in, d_out, transposed))
    structured = Structure(tuple(layers), ()).structured
    return Structure(tuple(layers), tuple(i for i in range(n) if i not in structured))


def perturbed_call(
    fn, leaves: Sequence, args: tuple, structure: Structure, perturbations: Sequence[jax.Array]
):
    """Evaluate `fn(leaves, *args)` with `perturbations[k]` added to the output of layer k.

    Returns the outputs and the inputs a of every layer of `structure`, in its order.
    """
    closed = _closed_jaxpr(fn, leaves, *args)
    walker = _Walker({layer.position: e for layer, e in zip(structure.layers, perturbations, strict=True)})
    for i, var in enumerate(closed.jaxpr.invars[: len(leaves)]):
        walker.origin[var] = ("param", i)
    (out,) = walker.run(closed.jaxpr, closed.consts, jax.tree.leaves((list(leaves), *args)))
    return out, [walker.inputs[layer.position] for layer in structure.layers]
