"""Helpers shared by the tests and the benchmarks (not part of the public API).

* Reference kernels, computed independently of `ntkspec.ntk`: the dense float64 NTK K = J Jᵀ with J
  from `jax.jacrev` (`reference_kernel`, `nnx_reference`), and the digits NTK (`digits_ntk`) that the
  estimator tests and the work-precision and alignment benchmarks use.
* Synthetic spectra: power-law kernels K = U diag(i^-α) Uᵀ with Haar-distributed U (`power_law`).
* Exact float64 summaries of a dense kernel (`exact_summary`, NumPy only) and `relative_error`.
* Sweep stores written through the real writer (`store.RunWriter`) with synthetic records
  (`synthetic_record`, `write_store`).

Kernels are float64: call these with x64 enabled (the tests' conftest and the benchmarks' float64
workers do). The builders are cached, so treat the arrays they return as read-only.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ntkspec.experiments import store
from ntkspec.experiments.config import SweepConfig, runs
from ntkspec.experiments.records import SCALAR_FIELDS, Record

# --------------------------------------------------------------------------------------------
# Reference kernels.


def reference_kernel(apply, params, x) -> np.ndarray:
    """K = J Jᵀ in float64 NumPy, J from `jax.jacrev` of the flattened outputs `apply(params, x)`.

    Rows are sample-major (row i·C + c), as in `ntkspec.NTKOperator`.
    """
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x64 = jnp.asarray(x, jnp.float64)
    jac = jax.jit(jax.jacrev(lambda p: apply(p, x64).reshape(-1)))(params64)
    rows = np.concatenate([np.asarray(j).reshape(j.shape[0], -1) for j in jax.tree.leaves(jac)], 1)
    return rows @ rows.T


def nnx_reference(module: nnx.Module, x) -> np.ndarray:
    """`reference_kernel` of a Flax nnx module called as `module(x)` (its non-parameter state fixed)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    rest64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), rest)
    return reference_kernel(lambda p, x: nnx.merge(graphdef, p, rest64)(x), params, x)


def relative_error(got, want) -> float:
    """max |got − want| / max |want|, in float64."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@functools.cache
def digits_data(num_samples: int = 100) -> tuple[jax.Array, np.ndarray]:
    """The first `num_samples` scikit-learn digits as float64 vectors in [0, 1], and their labels."""
    from ntkspec import data

    digits = data.load("digits")
    x = digits.x_train[:num_samples].reshape(num_samples, -1)
    return jnp.asarray(x, jnp.float64), np.asarray(digits.y_train[:num_samples])


def _he_relu_mlp(key, sizes) -> list[tuple[jax.Array, jax.Array]]:
    """Weights N(0, 2 / fan_in), zero biases, float64; one key split per layer in turn.

    The digits NTK's own network, independent of `ntkspec.models` on purpose: K is a fixed reference
    (the README's and benchmarks/RESULTS.md's digits-NTK figures were measured on it).
    """
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (fan_in, fan_out), jnp.float64) * np.sqrt(2.0 / fan_in)
        params.append((w, jnp.zeros(fan_out, jnp.float64)))
    return params


def _relu_mlp_apply(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


@functools.cache
def digits_ntk(num_samples: int = 100, width: int = 64, seed: int = 0) -> np.ndarray:
    """Empirical NTK (float64, rows i·C + c) of a ReLU MLP 64 → w → w → 10 at init on the digits."""
    x, _ = digits_data(num_samples)
    params = _he_relu_mlp(jax.random.key(seed), [64, width, width, 10])
    return reference_kernel(_relu_mlp_apply, params, x)


# --------------------------------------------------------------------------------------------
# Synthetic spectra and exact summaries.


@functools.cache
def power_law(alpha: float, n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(K, λ): K = U diag(λ) Uᵀ, λᵢ = i^-α, U Haar-distributed (float64 NumPy)."""
    lam = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    g = np.random.default_rng(seed).standard_normal((n, n))
    u, r = np.linalg.qr(g)
    u = u * np.sign(np.diag(r))
    return (u * lam) @ u.T, lam


def cosine(kernel: np.ndarray) -> np.ndarray:
    """D^{-1/2} K D^{-1/2}."""
    d = 1.0 / np.sqrt(np.diag(kernel))
    return kernel * d[:, None] * d[None, :]


def exact_summary(kernel: np.ndarray) -> dict:
    """Exact float64 trace, entropy, effective rank, descending eigenvalues and vectors.

    NumPy only, so that it checks the library's entropy rather than repeating it.
    """
    lam, vecs = np.linalg.eigh(kernel)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    clipped = np.clip(lam, 0.0, None)
    p = clipped / clipped.sum()
    nz = p[p > 0]
    entropy = float(-np.sum(nz * np.log(nz)))
    return {
        "trace": float(np.trace(kernel)),
        "entropy": entropy,
        "erank": float(np.exp(entropy)),
        "eigenvalues": lam,
        "eigenvectors": vecs,
    }


@functools.cache
def reference(label: str) -> tuple[np.ndarray, dict]:
    """(K, exact summary) for the n = 1000 test kernels: "alpha=0.5|1|2", "ntk", "cosine"."""
    if label.startswith("alpha="):
        kernel = power_law(float(label.removeprefix("alpha=")))[0]
    elif label == "ntk":
        kernel = digits_ntk()
    elif label == "cosine":
        kernel = cosine(digits_ntk())
    else:
        raise KeyError(label)
    return kernel, exact_summary(kernel)


# --------------------------------------------------------------------------------------------
# Sweep stores.

TOP_K = 3


def synthetic_record(epoch: int, value: float) -> Record:
    """A record whose scalars are `value + epoch / 100` (so every run and record differs)."""
    scalars = {name: value + epoch / 100 for name in SCALAR_FIELDS}
    top = np.array([3.0, 2.0, 1.0]) * scalars["trace"]
    return Record(epoch=epoch, method="exact", top_eigenvalues=top, cosine_top_eigenvalues=top / 2, **scalars)


def write_store(path: Path, config: SweepConfig, lengths: dict[str, int], statuses: dict[str, str]) -> Path:
    """Write the runs of `config` named in `lengths`, with that many records and the given status
    ("complete" by default; "running" leaves the run unfinished)."""
    root = store.open_store(path, config.to_dict())
    for run in runs(config):
        if run.name not in lengths:
            continue
        writer = store.RunWriter(root, run.name, run.attrs(config), TOP_K)
        for epoch in range(lengths[run.name]):
            writer.append(synthetic_record(10 * epoch, float(run.index)))
        status = statuses.get(run.name, "complete")
        if status != "running":
            writer.finish(status, "loss became NaN" if status == "diverged" else "")
    return path
