"""Test-only stand-in for `ntkspec.operator.ntk` and `spectrum(op, method="auto", key=...)`.

Used until the real operator and estimators are both merged into this branch: K = J J^T from
`jax.jacrev`, eigenvalues from the exact path of `ntkspec.spectrum`. `install()` does nothing once
the real ones are present (then this file can be deleted, with the `_standin` lines of the tests).
"""

import inspect
import sys
import types

import jax
import jax.numpy as jnp
from flax import nnx


class _Op:
    def __init__(self, kernel):
        self.kernel = kernel
        self.shape = kernel.shape

    def dense(self):
        return self.kernel

    def normalized(self):
        d = 1.0 / jnp.sqrt(jnp.diag(self.kernel))
        return _Op(self.kernel * d[:, None] * d[None, :])


def _ntk(module, x):
    graphdef, params = nnx.split(module)
    jac = jax.jacrev(lambda p: nnx.merge(graphdef, p)(x).reshape(-1))(params)
    j = jnp.concatenate([a.reshape(a.shape[0], -1) for a in jax.tree.leaves(jac)], axis=1)
    return _Op(j @ j.T)


def install():
    try:
        import ntkspec.operator  # noqa: F401
    except ModuleNotFoundError:
        module = types.ModuleType("ntkspec.operator")
        module.ntk = _ntk
        sys.modules["ntkspec.operator"] = module
    import ntkspec.spectrum  # noqa: F401  (the package re-exports a function of that name)

    spectrum_module = sys.modules["ntkspec.spectrum"]
    if "key" not in inspect.signature(spectrum_module.spectrum).parameters:
        exact = spectrum_module.spectrum

        def spectrum(op, method="auto", *, key=None, top_k=None):
            return exact(op, "exact", top_k=top_k)

        spectrum_module.spectrum = spectrum
