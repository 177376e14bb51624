"""Full-batch training, with a measurement at each recording epoch.

Between two recording epochs the optimiser steps run inside one compiled loop: the model is split
once into its graph definition and parameters (`nnx.split`), so a step is a pure function
(params, opt_state) -> (params, opt_state) that `jax.lax.fori_loop` repeats. The trip count is a
traced argument, so one compilation serves every gap between recordings, linear or log-spaced (a
`lax.scan` would recompile for every distinct gap length). At each recording epoch the trainer
evaluates the loss and accuracy on the training and test sets and hands them, with the network, to
the `measure` callback (`ntkspec.experiments.measure.Measure`), whose `Record` goes to the recorder.

A loss that becomes NaN or Inf ends the run with status "diverged" and advice, never an exception:
one bad width must not stop a sweep (failures are data, as in lineax's `RESULTS`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ntkspec import sharding
from ntkspec._errors import bad_value
from ntkspec.data import Split
from ntkspec.experiments.config import OPTIMIZERS, SPACINGS
from ntkspec.experiments.records import Record


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of `train`.

    status : "complete" or "diverged"; message : why it diverged, with advice.
    n_records : records made; model : the network at the end of training.
    min_epoch, min_test_loss : the epoch of the minimum test loss (exact, from the replay) and its value.
    min_model : the network at that epoch (its parameters kept by the replay).
    minimum : the `Record` measured at the parameters of that epoch (None without a measurement).
    trajectory : every `eval_every` epochs (and at each record): "epoch", "train_loss", "test_loss"
        and, with a measurement, "trace" (tr K from the exact diagonal), as arrays.
    stopped : the epoch training stopped at (`patience` epochs past the minimum, or the last epoch).
    """

    status: str
    message: str
    n_records: int
    model: nnx.Module
    min_epoch: int = -1
    min_test_loss: float = float("nan")
    min_model: nnx.Module | None = None
    minimum: Record | None = None
    trajectory: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    stopped: int = 0


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


@functools.partial(jax.jit, static_argnums=(0, 1))
def _replay(graphdef, optimizer, params, opt_state, n_steps, x, y, x_test, y_test):
    """`n_steps` steps one by one with the test loss after each: the parameters, the epoch offset
    (0 .. n_steps) and the loss of the lowest one, the starting point included."""

    def test_loss(p):
        return _loss_and_accuracy(graphdef, p, x_test, y_test)[0]

    def step(i, carry):
        params, opt_state, best = carry
        grads = jax.grad(lambda p: _loss_and_accuracy(graphdef, p, x, y)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        loss = test_loss(params)
        better = loss < best[2]
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (params, i + 1, loss), best)
        return params, opt_state, best

    start = (params, jnp.array(0), test_loss(params))
    return jax.lax.fori_loop(0, n_steps, step, (params, opt_state, start))[2]


@sharding.computes_on(lambda *args, mesh=None, **kwargs: sharding.as_mesh(mesh))
def train(
    model: nnx.Module,
    split: Split,
    optimizer: optax.GradientTransformation,
    epochs: Sequence[int],
    measure=None,
    *,
    recorder: Callable[[Record], None] | None = None,
    eval_every: int = 10,
    patience: int | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train `model` full-batch on `split` with softmax cross-entropy, measuring at `epochs`.

    The test loss is evaluated every `eval_every` epochs (and at every record). The minimum test loss
    is then pinned to the epoch by a replay: from the parameters kept at the evaluation before the
    lowest one, one step at a time over the two evaluation intervals around it (full-batch training
    is deterministic, so the replay retraces the run). The network at that epoch is measured once
    more (`TrainResult.minimum`).

    Parameters
    ----------
    model : a Flax nnx module mapping inputs to (N, C) logits; not modified (a trained copy is returned).
    split : training, NTK and test samples.
    optimizer : an Optax transformation, e.g. from `make_optimizer`; reuse one object across runs
        of one architecture to reuse the compiled training loop.
    epochs : increasing recording epochs (see `record_epochs`); the last one is the training length.
        One epoch is one full-batch step.
    measure : called at each recording epoch with the network, the epoch and its losses and
        accuracies; returns the `Record` (`ntkspec.experiments.measure.Measure`). None: no records,
        no trace (e.g. a learning-rate pilot).
    recorder : called with each `Record` as soon as it is measured (e.g. a store writer).
    eval_every : epochs between two evaluations of the test loss (and of the trace).
    patience : stop this many epochs past the lowest test loss so far (None: train to the end).
    mesh : a mesh with "data" and "model" axes (as for `ntkspec.ntk`; default: the mesh set with
        `jax.set_mesh`, if any): parameters and optimizer states split on "model", samples on
        "data"; the numbers equal the single-device ones.
    """
    epochs = np.asarray(epochs, dtype=np.int64)
    if epochs.ndim != 1 or epochs.size == 0 or epochs[0] < 0 or np.any(np.diff(epochs) <= 0):
        raise bad_value("epochs", repr(epochs.tolist()), "strictly increasing epochs >= 0")
    if not isinstance(eval_every, int | np.integer) or eval_every < 1:
        raise bad_value("eval_every", repr(eval_every), "an integer >= 1 (epochs between test evaluations)")
    if patience is not None and (not isinstance(patience, int | np.integer) or patience < 0):
        raise bad_value("patience", repr(patience), "an integer >= 0 or None (train to the last epoch)")
    graphdef, params = nnx.split(model)
    opt_state = optimizer.init(params)
    x_train, y_train = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    x_test, y_test = jnp.asarray(split.x_test), jnp.asarray(split.y_test)
    mesh = sharding.as_mesh(mesh)
    if mesh is not None:
        params, opt_state = sharding.shard_params((params, opt_state), mesh)
        x_train, y_train, x_test, y_test = (
            sharding.shard_batch(a, mesh) for a in (x_train, y_train, x_test, y_test)
        )
    last = int(epochs[-1])
    recording = set(epochs.tolist())
    points = sorted(recording | set(range(0, last + 1, eval_every)) | {last})
    trajectory: dict[str, list] = {"epoch": [], "train_loss": [], "test_loss": []}
    if measure is not None:
        trajectory["trace"] = []
    best = (np.inf, -1, (params, opt_state), 0)  # loss, epoch, state kept before it, its epoch
    kept, done, previous = ((params, opt_state), 0), 0, 0
    for epoch in points:
        params, opt_state, finite = _steps(
            graphdef, optimizer, params, opt_state, epoch - previous, x_train, y_train
        )
        metrics = _metrics(graphdef, params, (x_train, y_train), (x_test, y_test))
        train_loss, test_loss = metrics["train_loss"], metrics["test_loss"]
        params_finite = all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(params))
        if not (bool(finite) and params_finite and np.isfinite(train_loss)):
            message = (
                f"diverged: the training loss became NaN or Inf between epochs {previous} and "
                f"{epoch}; try a lower learning rate (e.g. 10x lower)"
            )
            return TrainResult(
                "diverged",
                message,
                done,
                nnx.merge(graphdef, params),
                trajectory=_arrays(trajectory),
                stopped=epoch,
            )
        previous = epoch
        network = nnx.merge(graphdef, params)
        for name, value in (("epoch", epoch), ("train_loss", train_loss), ("test_loss", test_loss)):
            trajectory[name].append(value)
        if measure is not None:
            trajectory["trace"].append(measure.trace(network))
        if test_loss < best[0]:
            best = (test_loss, epoch, *kept)
        kept = ((params, opt_state), epoch)
        if measure is not None and epoch in recording:
            record = measure(network, epoch, metrics)
            if recorder is not None:
                recorder(record)
            done += 1
        if patience is not None and epoch >= best[1] + patience:
            break
    final = nnx.merge(graphdef, params)
    # The minimum lies after the evaluation before the lowest one and before the one after it.
    _, best_epoch, (start_params, start_state), start = best
    span = min(best_epoch + eval_every, previous) - start
    min_params, offset, min_loss = _replay(
        graphdef, optimizer, start_params, start_state, span, x_train, y_train, x_test, y_test
    )
    min_epoch, min_model = start + int(offset), nnx.merge(graphdef, min_params)
    minimum = None
    if measure is not None:
        metrics = _metrics(graphdef, min_params, (x_train, y_train), (x_test, y_test))
        minimum = measure(min_model, min_epoch, metrics, consecutive=False)
    return TrainResult(
        "complete",
        "",
        done,
        final,
        min_epoch=min_epoch,
        min_test_loss=float(min_loss),
        min_model=min_model,
        minimum=minimum,
        trajectory=_arrays(trajectory),
        stopped=previous,
    )


def _metrics(graphdef, params, train_set, test_set) -> dict[str, float]:
    """Loss and accuracy on the training and the test set (`records.METRIC_FIELDS`)."""
    train_loss, train_accuracy = map(float, _evaluate(graphdef, params, *train_set))
    test_loss, test_accuracy = map(float, _evaluate(graphdef, params, *test_set))
    return {
        "train_loss": train_loss,
        "test_loss": test_loss,
        "train_accuracy": train_accuracy,
        "test_accuracy": test_accuracy,
    }


def _arrays(columns: dict[str, list]) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(values, dtype=np.int64 if name == "epoch" else np.float64)
        for name, values in columns.items()
    }
