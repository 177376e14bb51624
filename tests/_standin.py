"""Test-only stand-in for `spectrum(op, method="auto", key=...)` until the estimators are merged.

The sweep calls `spectrum(op, method="auto", key=..., top_k=...)`; until `ntkspec.spectrum` takes a
`key`, this routes such calls to its exact path. `install()` does nothing once the real signature is
present (then this file can be deleted, with the `_standin` lines of the tests and `_sweep_child.py`).
"""

import inspect
import sys


def install():
    import ntkspec.spectrum  # noqa: F401  (the package re-exports a function of that name)

    spectrum_module = sys.modules["ntkspec.spectrum"]
    if "key" not in inspect.signature(spectrum_module.spectrum).parameters:
        exact = spectrum_module.spectrum

        def spectrum(op, method="auto", *, key=None, top_k=None):
            return exact(op, "exact", top_k=top_k)

        spectrum_module.spectrum = spectrum
