"""Reference kernels for the estimator tests: power laws and a digits-MLP NTK (float64, cached)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits


@functools.cache
def power_law(alpha: float, n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(K, λ): K = U diag(λ) Uᵀ, λᵢ = i^-α, U Haar-distributed (float64 numpy)."""
    lam = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    g = np.random.default_rng(seed).standard_normal((n, n))
    u, r = np.linalg.qr(g)
    u = u * np.sign(np.diag(r))
    return (u * lam) @ u.T, lam


@functools.cache
def digits_ntk(num_samples: int = 100, width: int = 64, seed: int = 0) -> np.ndarray:
    """Empirical NTK K = J Jᵀ (float64, rows i·C + c) of a ReLU MLP 64→w→w→10 at init."""
    x, _ = digits_data(num_samples)
    params = _mlp_init(jax.random.key(seed), [64, width, width, 10])
    flat, unravel = ravel_pytree(params)

    def outputs(p, sample):
        return _mlp_apply(unravel(p), sample[None])[0]

    # Per-sample Jacobians (C, P), stacked sample-major into J (N·C, P).
    jac = jax.vmap(jax.jacrev(outputs), in_axes=(None, 0))(flat, x).reshape(-1, flat.size)
    return np.asarray(jac @ jac.T)


@functools.cache
def digits_data(num_samples: int = 100) -> tuple[jax.Array, np.ndarray]:
    data = load_digits()
    x = jnp.asarray(data.data[:num_samples] / 16.0, jnp.float64)
    return x, np.asarray(data.target[:num_samples])


def cosine(kernel: np.ndarray) -> np.ndarray:
    """D^{-1/2} K D^{-1/2}."""
    d = 1.0 / np.sqrt(np.diag(kernel))
    return kernel * d[:, None] * d[None, :]


def exact_summary(kernel: np.ndarray) -> dict:
    """Exact float64 trace, entropy, effective rank, descending eigenvalues and vectors."""
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


def _mlp_init(key, sizes):
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (fan_in, fan_out), jnp.float64) * np.sqrt(2.0 / fan_in)
        params.append((w, jnp.zeros(fan_out, jnp.float64)))
    return params


def _mlp_apply(params, x):
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return x @ w + b


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
