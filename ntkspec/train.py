"""Full-batch training with NTK spectra recorded along the way.

Between two recording epochs the optimiser steps run inside one compiled loop: the model is split
once into its graph definition and parameters (`nnx.split`), so a step is a pure function
(params, opt_state) -> (params, opt_state) that `jax.lax.fori_loop` repeats. The trip count is a
traced argument, so one compilation serves every gap between recordings, linear or log-spaced (a
`lax.scan` would recompile for every distinct gap length). At each recording epoch the trainer
evaluates the loss and accuracy on the training and test sets and the spectrum of the NTK on the
held-out NTK batch, raw and cosine-normalised, and the alignment A(K₀, K) = ⟨K₀, K⟩_F / (‖K₀‖_F ‖K‖_F)
of the NTK with the first record's K₀ (the initialisation; 1 − A is how far the kernel has moved,
Fort et al. 2020), and hands a `Record` to the recorder. A is exact when the spectrum is (K₀ kept
dense), otherwise matrix-free with `ALIGNMENT_MATVECS` products per kernel and its standard error.

A loss that becomes NaN or Inf ends the run with status "diverged" and advice, never an exception:
one bad width must not stop a sweep (failures are data, as in lineax's `RESULTS`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ntkspec import sharding
from ntkspec._errors import bad_value
from ntkspec._typing import Key
from ntkspec.data import Split
from ntkspec.estimators import DenseOperator, as_operator, kernel_alignment, kernel_alignment_stochastic
from ntkspec.operator import NTKOperator, ntk
from ntkspec.spectrum import choose_method, spectra

OPTIMIZERS = ("adam", "sgd")
SPACINGS = ("linear", "log")
#: Matvecs per kernel of the matrix-free alignment with K₀ (about 0.1-1 % error on NTKs; see
#: tests/test_estimators_alignment.py).
ALIGNMENT_MATVECS = 100


@dataclasses.dataclass(frozen=True)
class Record:
    """What is measured at one recording epoch (host values).

    `top_eigenvalues` has exactly `top_k` entries, NaN-padded when the kernel has fewer eigenvalues.
    `method` is the spectrum method used for the raw kernel ("exact" or "stochastic").
    """

    epoch: int
    train_loss: float
    test_loss: float
    train_accuracy: float
    test_accuracy: float
    trace: float
    trace_stderr: float
    entropy: float
    entropy_stderr: float
    effective_rank: float
    effective_rank_stderr: float
    cosine_entropy: float
    cosine_entropy_stderr: float
    cosine_effective_rank: float
    cosine_effective_rank_stderr: float
    top_eigenvalues: np.ndarray
    cosine_top_eigenvalues: np.ndarray
    init_alignment: float
    init_alignment_stderr: float
    method: str
    spectrum_seconds: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of `train`: status "complete" or "diverged", a message, records made, the model."""

    status: str
    message: str
    n_records: int
    model: nnx.Module


def make_optimizer(
    name: str, lr: float, *, b1: float = 0.9, b2: float = 0.999, momentum: float = 0.9
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015; `b1`, `b2`) or SGD with heavy-ball `momentum`, at learning rate `lr`."""
    if not lr > 0:
        raise bad_value("lr", lr, "a positive learning rate")
    if name == "adam":
        return optax.adam(lr, b1=b1, b2=b2)
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    raise bad_value("optimizer", repr(name), f"one of {OPTIMIZERS}")


def record_epochs(epochs: int, n_records: int, spacing: str = "log") -> np.ndarray:
    """Sorted distinct recording epochs in [0, epochs], always including 0 and `epochs`.

    "linear": n_records evenly spaced epochs; "log": 0 then n_records - 1 epochs geometrically spaced
    from 1 to `epochs` (rounded, so fewer when they collide at small epochs).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise bad_value("epochs", repr(epochs), "a non-negative integer")
    if not isinstance(n_records, int) or n_records < 2:
        raise bad_value("n_records", repr(n_records), "an integer >= 2 (first and last epoch)")
    if spacing == "linear":
        points = np.linspace(0, epochs, n_records)
    elif spacing == "log":
        points = np.concatenate([[0], np.geomspace(1, max(epochs, 1), n_records - 1)])
    else:
        raise bad_value("spacing", repr(spacing), f"one of {SPACINGS}")
    return np.unique(np.clip(np.round(points).astype(np.int64), 0, epochs))


def _loss_and_accuracy(graphdef, params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
    return loss, accuracy


_evaluate = jax.jit(_loss_and_accuracy, static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _steps(graphdef, optimizer, params, opt_state, n_steps, x, y):
    """`n_steps` full-batch steps; also whether every loss on the way was finite.

    `graphdef` and `optimizer` are static, so runs of one architecture share one compilation
    when they share the optimizer object.
    """

    def step(_, carry):
        params, opt_state, finite = carry
        loss, grads = jax.value_and_grad(lambda p: _loss_and_accuracy(graphdef, p, x, y)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, finite & jnp.isfinite(loss)

    return jax.lax.fori_loop(0, n_steps, step, (params, opt_state, jnp.array(True)))


def _pad(values: np.ndarray, k: int) -> np.ndarray:
    out = np.full(k, np.nan)
    values = np.asarray(values, dtype=np.float64)[:k]
    out[: values.size] = values
    return out


# One compiled program per operator structure (the operators are pytree arguments): faster than
# eager dispatch, and on a mesh its collectives run inside one program.
_alignment_stochastic = jax.jit(kernel_alignment_stochastic, static_argnames=("num_matvecs", "n", "dtype"))


def _alignment_with_first(first, op, key: Key) -> tuple[float, float]:
    """A(K₀, K) and its standard error: exact between dense kernels, else matrix-free."""
    if isinstance(first, DenseOperator) and isinstance(op, DenseOperator):
        result = kernel_alignment(first.dense(), op.dense())
    else:
        result = _alignment_stochastic(first, op, key, num_matvecs=ALIGNMENT_MATVECS)
    return float(result.value), float(result.stderr)


def ntk_spectra(model: nnx.Module, x: jax.Array, key: Key, top_k: int, method: str, mesh: Mesh | None = None):
    """Spectra of the NTK of `model` on `x` and of its cosine normalisation D^-1/2 K D^-1/2."""
    return spectra(ntk(model, x, mesh=mesh), method=method, key=key, top_k=top_k)


@sharding.computes_on(lambda *args, mesh=None, **kwargs: sharding.as_mesh(mesh))
def train(
    model: nnx.Module,
    split: Split,
    optimizer: optax.GradientTransformation,
    epochs: Sequence[int],
    key: Key,
    *,
    top_k: int = 10,
    method: str = "auto",
    recorder: Callable[[Record], None] | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train `model` full-batch on `split` with softmax cross-entropy, recording at `epochs`.

    Parameters
    ----------
    model : a Flax nnx module mapping inputs to (N, C) logits; not modified (a trained copy is returned).
    split : training, NTK and test samples.
    optimizer : an Optax transformation, e.g. from `make_optimizer`; reuse one object across runs
        of one architecture to reuse the compiled training loop.
    epochs : increasing recording epochs (see `record_epochs`); the last one is the training length.
        One epoch is one full-batch step.
    key : PRNG key for the stochastic spectrum estimators (folded with the epoch at each record).
    top_k : top eigenvalues kept per record.
    method : spectrum method, passed to `ntkspec.spectrum.spectra`.
    recorder : called with each `Record` as soon as it is measured (e.g. a store writer).
    mesh : a mesh with "data" and "model" axes (as for `ntkspec.ntk`; default: the mesh set with
        `jax.set_mesh`, if any): parameters and optimizer states split on "model", samples on
        "data"; the numbers equal the single-device ones.
    """
    epochs = np.asarray(epochs, dtype=np.int64)
    if epochs.ndim != 1 or epochs.size == 0 or epochs[0] < 0 or np.any(np.diff(epochs) <= 0):
        raise bad_value("epochs", repr(epochs.tolist()), "strictly increasing epochs >= 0")
    graphdef, params = nnx.split(model)
    opt_state = optimizer.init(params)
    x_train, y_train = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    x_test, y_test = jnp.asarray(split.x_test), jnp.asarray(split.y_test)
    x_ntk = jnp.asarray(split.x_ntk)
    mesh = sharding.as_mesh(mesh)
    if mesh is not None:
        params, opt_state = sharding.shard_params((params, opt_state), mesh)
        x_train, y_train, x_test, y_test = (
            sharding.shard_batch(a, mesh) for a in (x_train, y_train, x_test, y_test)
        )

    done, previous, first = 0, 0, None
    for epoch in epochs.tolist():
        params, opt_state, finite = _steps(
            graphdef, optimizer, params, opt_state, epoch - previous, x_train, y_train
        )
        train_loss, train_accuracy = map(float, _evaluate(graphdef, params, x_train, y_train))
        test_loss, test_accuracy = map(float, _evaluate(graphdef, params, x_test, y_test))
        params_finite = all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))
        if not (bool(finite) and params_finite and np.isfinite(train_loss)):
            message = (
                f"diverged: the training loss became NaN or Inf between epochs {previous} and "
                f"{epoch}; try a lower learning rate (e.g. 10x lower)"
            )
            return TrainResult("diverged", message, done, nnx.merge(graphdef, params))
        previous = epoch
        start = time.perf_counter()
        op: NTKOperator | DenseOperator = ntk(nnx.merge(graphdef, params), x_ntk, mesh=mesh)
        if choose_method(op, method) == "exact":
            op = as_operator(op.dense())  # K formed once, for both spectra and the alignment
        key_spectrum = jax.random.fold_in(key, epoch)
        raw, cosine = spectra(op, method=method, key=key_spectrum, top_k=top_k)
        first = op if first is None else first
        alignment, alignment_stderr = _alignment_with_first(first, op, jax.random.fold_in(key_spectrum, 1))
        record = Record(
            epoch=epoch,
            train_loss=train_loss,
            test_loss=test_loss,
            train_accuracy=train_accuracy,
            test_accuracy=test_accuracy,
            trace=raw.trace,
            trace_stderr=raw.trace_stderr,
            entropy=raw.entropy,
            entropy_stderr=raw.entropy_stderr,
            effective_rank=raw.effective_rank,
            effective_rank_stderr=raw.effective_rank_stderr,
            cosine_entropy=cosine.entropy,
            cosine_entropy_stderr=cosine.entropy_stderr,
            cosine_effective_rank=cosine.effective_rank,
            cosine_effective_rank_stderr=cosine.effective_rank_stderr,
            top_eigenvalues=_pad(raw.eigenvalues, top_k),
            cosine_top_eigenvalues=_pad(cosine.eigenvalues, top_k),
            init_alignment=alignment,
            init_alignment_stderr=alignment_stderr,
            method=raw.method,
            spectrum_seconds=time.perf_counter() - start,
        )
        if recorder is not None:
            recorder(record)
        done += 1
    return TrainResult("complete", "", done, nnx.merge(graphdef, params))
