"""The network against its kernels: kernel regression with five kernels on each run of a data-size sweep.

A data-size sweep whose config names `kernels` (`records.KERNELS`) fits, after training each run
(n training samples, C classes), kernel ridge regression on the run's training set and scores it on
the run's test set, with

* "init": the eNTK K₀ = J₀ J₀ᵀ of the run's network at initialisation;
* "pretrained": the eNTK of the same seed's network trained by the same protocol on the first
  k = `pretrained_samples` samples of its nested training set: the run of size k and this seed (its
  split, initialisation, calibrated learning rate, epochs and patience), at its minimum test loss:
  the sweep's own training of it where this process did that, else that run trained again, once per
  process; fitted for n >= k only (status "n < k" below);
* "final": the eNTK of the run's network at its minimum test loss (`TrainResult.min_model`, the
  trained network of the study's protocol; the same choice as for "pretrained");
* "ntk_infinite": the width-aware infinite-width NTK K∞ ⊗ I_C of the MLP with the run's widths,
  (d_in, n_1, ..., n_{L-1}) (`ntkspec.infinite.mlp_ntk`);
* "nngp": the NNGP Σ_L ⊗ I_C (`ntkspec.infinite.mlp_nngp`).

Regression, as Vyas, Bansal & Nakkiran ("Limitations of the NTK for understanding generalization in
deep learning", 2022): targets Y = one-hot − 1/C (−0.1 / 0.9 for C = 10: zero mean over the classes,
as Lee et al. 2018 and `benchmarks/kernel_regression_mnist`), the kernel predictor
f̂(x*) = K(x*, X)(K + λI)⁻¹ y (no f₀ offset) with λ = ρ · tr K / rows, ρ chosen among
`kernel_ridges` (by default 1e-8 … 1, which `benchmarks/kernel_regression_mnist` uses too) by the MSE
on the run's NTK batch, which is held out from both training and test sets; one ρ is used as given.
A ridge matters for the eNTK of a small network: its kernel has rank <= P, and near N·C ≈ P a
near-ridgeless fit is the interpolation peak of double descent.

Solves: exact, Cholesky in float64 on the host (scipy), whatever JAX's precision (sweeps train in
float32, where a relative ridge of 1e-4 or below is beyond a float32 factorisation):

* eNTK: K = J Jᵀ with J the (N·C) × P Jacobian, rows sample-major. With R = N·C rows and P
  parameters, the dual (K + λI) α = y when R <= P, else the primal (JᵀJ + λI) w = Jᵀ y, P × P, its
  Gram accumulated over chunks of samples from the layers' inputs and sensitivities
  (`exact.parameter_gram`: C times fewer operations than Jᵀ J; J is never held whole); the two give
  the same predictor by the push-through identity Jᵀ (J Jᵀ + λI)⁻¹ = (JᵀJ + λI)⁻¹ Jᵀ. Either way
  f̂(x*) = J(x*) w with w = Jᵀ α, one `jax.jvp` on the test set. The study's data-scaling MLP
  (depth 4, width 8, MNIST: P = 6,514) is solved in the primal from n = 652 on.
* K∞ and NNGP: K ⊗ I_C is C copies of the N × N kernel, so one N × N Cholesky serves all C columns
  of Y (kernel entries computed in JAX's precision: float32 unless x64 is on).

Per kernel the store keeps (`store.RunWriter.kernels`): test MSE (mean over the M·C test entries of
(f̂ − Y*)²), test error (argmax f̂ ≠ label), ρ and λ, the relative residual ‖(A + λI)x − b‖ / ‖b‖ of the
system solved, the method ("dual" or "primal"), a status ("fitted", "n < k", or the error that
stopped it) and the seconds it took. `analysis.kernel_scaling` fits their data-scaling exponents.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import nnx
from jax.flatten_util import ravel_pytree

from ntkspec import exact, infinite
from ntkspec.data import Split
from ntkspec.experiments.config import Run, SweepConfig, run_model, run_split, runs
from ntkspec.experiments.train import TrainResult, config_optimizer, record_epochs, train
from ntkspec.model import adapt

#: Jacobian entries computed per chunk of samples (float32: 128 MiB).
CHUNK_ENTRIES = 2**25
#: Samples per forward and backward pass of `exact.parameter_gram`.
GRAM_CHUNK = 256
#: Display names of the models, "network" first.
LABELS = {
    "network": "network",
    "init": "eNTK at init",
    "pretrained": "eNTK pretrained",
    "final": "eNTK final",
    "ntk_infinite": "K∞ (NTK)",
    "nngp": "NNGP",
}


@dataclasses.dataclass(frozen=True)
class Fit:
    """One kernel regression: test predictions (M, C), the ρ chosen and its λ = ρ · tr K / rows, the
    solve's relative residual, its method."""

    predictions: np.ndarray
    rho: float
    ridge: float
    residual: float
    method: str


def targets(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """One-hot minus 1/C, float64 (N, C)."""
    return np.eye(n_classes)[np.asarray(labels)] - 1.0 / n_classes


def scores(predictions: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[float, float]:
    """(test MSE over the M·C entries against `targets`, test error of the argmax)."""
    mse = float(np.mean((predictions - targets(labels, n_classes)) ** 2))
    return mse, float(np.mean(np.argmax(predictions, axis=1) != np.asarray(labels)))


def _solve(matrix: np.ndarray, rhs: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """x with (A + λI) x = b by Cholesky (float64), and ‖(A + λI) x − b‖ / ‖b‖ (max over columns)."""
    shifted = matrix.copy()
    shifted.flat[:: matrix.shape[0] + 1] += ridge
    x = scipy.linalg.cho_solve(scipy.linalg.cho_factor(shifted, overwrite_a=True), rhs)
    b = rhs.reshape(rhs.shape[0], -1)
    residual = np.linalg.norm((matrix @ x).reshape(b.shape) + ridge * x.reshape(b.shape) - b, axis=0)
    return x, float(np.max(residual / np.where(np.linalg.norm(b, axis=0) > 0, np.linalg.norm(b, axis=0), 1)))


def _ridge_path(matrix, rhs, scale: float, rhos, validate) -> tuple[np.ndarray, float, float, float]:
    """(x, ρ, λ, residual) of (A + λI) x = b, λ = ρ · scale, for the ρ of `rhos` with the lowest
    `validate(x)` (the validation MSE); a single ρ is taken as it is."""
    best = None
    for rho in rhos:
        x, residual = _solve(matrix, rhs, rho * scale)
        score = validate(x) if len(rhos) > 1 else 0.0
        if best is None or score < best[0]:
            best = (score, x, float(rho), float(rho * scale), residual)
    return best[1:]


def entk_regression(model: nnx.Module, split: Split, rhos) -> Fit:
    """Kernel regression with the eNTK J Jᵀ of `model` on `split` (dual or primal, module docstring),
    ρ chosen among `rhos` on the NTK batch."""
    apply, params, state, _ = adapt(model, (split.x_train[:1],))
    flat, unravel = ravel_pytree(params)
    n, c, p = split.x_train.shape[0], split.num_classes, flat.size

    y = targets(split.y_train, c)
    if n * c <= p:
        step = max(1, CHUNK_ENTRIES // (c * p))
        pieces = [
            _jacobian(apply, params, state, jnp.asarray(split.x_train[i : i + step]))
            for i in range(0, n, step)
        ]
        j = np.concatenate([np.asarray(piece, np.float64) for piece in pieces])
        gram, rhs, method = j @ j.T, y.reshape(-1), "dual"
    else:
        x = jnp.asarray(split.x_train)
        gram, rhs = exact.parameter_gram(apply, params, state, x, y, GRAM_CHUNK)
        method = "primal"

    def predict(x, solution):  # f̂ = J(x) w, w = Jᵀ α (dual) or the primal solution
        w = j.T @ solution if method == "dual" else solution
        out = _push(apply, params, state, jnp.asarray(x), unravel(jnp.asarray(w, flat.dtype)))
        return np.asarray(out, np.float64)

    def validate(solution):
        return scores(predict(split.x_ntk, solution), split.y_ntk, c)[0]

    solution, rho, ridge, residual = _ridge_path(gram, rhs, np.trace(gram) / (n * c), rhos, validate)
    return Fit(predict(split.x_test, solution), rho, ridge, residual, method)


@functools.partial(jax.jit, static_argnums=0)
def _jacobian(apply, params, state, x):
    """J(x), (N·C, P): rows sample-major, columns in `ravel_pytree`'s order of the parameters."""
    tree = jax.jacrev(lambda q: apply(q, state, x).reshape(-1))(params)
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(tree)], axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _push(apply, params, state, x, direction):
    """J(x) w as the (N, C) directional derivative of the outputs along w (`jax.jvp`)."""
    return jax.jvp(lambda q: apply(q, state, x), (params,), (direction,))[1]


def infinite_regression(kernel: str, split: Split, widths: tuple[int, ...], rhos) -> Fit:
    """Kernel regression with K∞ ("ntk") or the NNGP ("nngp") ⊗ I_C: one N × N solve for C columns,
    ρ chosen among `rhos` on the NTK batch."""
    function = {"ntk": infinite.mlp_ntk, "nngp": infinite.mlp_nngp}[kernel]
    dtype = jax.dtypes.canonicalize_dtype(np.float64)  # float64 where x64 is on
    x_train, x_test, x_ntk = (jnp.asarray(x, dtype) for x in (split.x_train, split.x_test, split.x_ntk))
    gram = np.asarray(function(x_train, None, widths), np.float64)
    held = np.asarray(function(x_ntk, x_train, widths), np.float64)

    def validate(alpha):
        return scores(held @ alpha, split.y_ntk, split.num_classes)[0]

    y = targets(split.y_train, split.num_classes)
    alpha, rho, ridge, residual = _ridge_path(gram, y, np.trace(gram) / gram.shape[0], rhos, validate)
    cross = np.asarray(function(x_test, x_train, widths), np.float64)
    return Fit(cross @ alpha, rho, ridge, residual, "dual")


def pretrained_network(
    config: SweepConfig,
    run: Run,
    dataset,
    calibrate: Callable[[Run], dict],
    known: dict[str, tuple[nnx.Module | None, str]] | None = None,
) -> tuple[nnx.Module | None, str]:
    """(the at-minimum network of the run of size k = `pretrained_samples` and `run`'s seed, "");
    (None, why) where that size is uncalibrated or diverged.

    `known` maps run names to such outcomes already in hand (the sweep puts its size-k runs there);
    a run not in it is trained again as `sweep` trains it, and its outcome added. `calibrate(run)`
    gives a run's learning-rate calibration (`sweep.calibrate`: the stored one, or a new one) where
    the config's lr is "calibrate".
    """
    source = next(r for r in runs(config) if r.seed == run.seed and r.n_train == config.pretrained_samples)
    known = {} if known is None else known
    if source.name not in known:
        known[source.name] = _train_pretrained(config, source, dataset, calibrate)
    return known[source.name]


def _train_pretrained(config, source: Run, dataset, calibrate) -> tuple[nnx.Module | None, str]:
    lr = config.lr
    if lr == "calibrate":
        calibration = calibrate(source)
        if calibration["status"] != "calibrated":
            return None, f"size k = {source.n_train} is uncalibrated: {calibration['message']}"
        lr = calibration["lr"]
    split = run_split(config, source, dataset)
    result = train(
        run_model(config, source, split),
        split,
        config_optimizer(config, lr),
        record_epochs(config.epochs, config.n_records, config.spacing),
        eval_every=config.eval_every,
        patience=config.patience,
        batch_size=config.batch_size,
        order=source.order_key(),
    )
    return trained_outcome(source, result)


def trained_outcome(source: Run, result: TrainResult) -> tuple[nnx.Module | None, str]:
    """What `pretrained_network` gives for the size-k run `source` trained into `result`."""
    if result.status != "complete":
        return None, f"training on k = {source.n_train} samples {result.message}"
    return result.min_model, ""


def evaluate(
    config: SweepConfig,
    run: Run,
    split: Split,
    network: nnx.Module,
    dataset,
    calibrate: Callable[[Run], dict],
    known: dict[str, tuple[nnx.Module | None, str]] | None = None,
) -> dict[str, np.ndarray]:
    """Kernel regression of the run with every kernel of `config.kernels`; arrays over the kernels.

    `network` is the run's trained network (at its minimum test loss); `calibrate` and `known` as in
    `pretrained_network`. A kernel that fails (a Cholesky that breaks down, memory) is recorded with
    its error as status and NaN scores.
    """
    c = split.num_classes
    columns: dict[str, list] = {
        k: []
        for k in (
            "kernel",
            "test_mse",
            "test_error",
            "rho",
            "ridge",
            "residual",
            "method",
            "status",
            "seconds",
        )
    }
    for name in config.kernels:
        start = time.perf_counter()
        fit, status = None, "fitted"
        try:
            if name == "pretrained" and run.n_train < config.pretrained_samples:
                status = "n < k"
            elif name == "pretrained":
                model, why = pretrained_network(config, run, dataset, calibrate, known)
                fit = entk_regression(model, split, config.kernel_ridges) if model is not None else None
                status = why or status
            elif name in ("init", "final"):
                model = run_model(config, run, split) if name == "init" else network
                fit = entk_regression(model, split, config.kernel_ridges)
            else:
                kernel = "ntk" if name == "ntk_infinite" else "nngp"
                fit = infinite_regression(kernel, split, network.widths, config.kernel_ridges)
        except (np.linalg.LinAlgError, RuntimeError, MemoryError) as error:
            status = f"failed: {type(error).__name__}: {error}"
        mse, error = scores(fit.predictions, split.y_test, c) if fit is not None else (np.nan, np.nan)
        values = {"kernel": name, "test_mse": mse, "test_error": error, "status": status}
        if fit is not None:
            values |= {"rho": fit.rho, "ridge": fit.ridge, "residual": fit.residual, "method": fit.method}
        values["seconds"] = time.perf_counter() - start
        for key, column in columns.items():
            column.append(values.get(key, "" if key == "method" else np.nan))
    text = ("kernel", "method", "status")
    return {k: np.asarray(v, dtype=str if k in text else np.float64) for k, v in columns.items()}
