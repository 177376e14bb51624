"""Full-batch or minibatch training, with a measurement at each recording epoch.

Between two recording epochs the optimiser steps run inside one compiled loop: the model is split
once into its graph definition and parameters (`nnx.split`), so a step is a pure function
(params, opt_state) -> (params, opt_state) that `jax.lax.fori_loop` repeats. The trip count is a
traced argument, so one compilation serves every gap between recordings, linear or log-spaced (a
`lax.scan` would recompile for every distinct gap length); it is one count for an ensemble whose
networks all step alike, and one per network once some have stopped (`_compiled_epochs`). A
network with convolutions on the CPU runs its epochs one dispatch each instead, its ensemble
unrolled (`_epochs`, `ensemble.over_networks`: XLA:CPU convolves about 18 times slower inside a
loop, and several times slower vmapped). At each recording epoch the trainer evaluates the loss
and accuracy on the training and test sets and hands them, with the network, to the `measure`
callback (`ntkspec.experiments.measure.Measure`), whose `Record` goes to the recorder.

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
from ntkspec.experiments.checkpoint import EnsembleState, tree_arrays, tree_from_arrays
from ntkspec.experiments.config import OPTIMIZERS, SPACINGS, SweepConfig
from ntkspec.experiments.ensemble import convolves_on_cpu, over_networks
from ntkspec.experiments.measure import Measure, ntk_traces
from ntkspec.experiments.records import METRIC_FIELDS, Record
from ntkspec.precision import full_precision


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


@functools.cache
def _learning_rate_in_state(name: str, b1: float, b2: float, momentum: float) -> optax.GradientTransformation:
    """Adam or SGD with the learning rate a value of the optimiser state (`optax.inject_hyperparams`),
    not a constant of the compiled program; one object per setting of the other hyperparameters."""
    if name == "adam":
        return optax.inject_hyperparams(optax.adam, static_args=("b1", "b2"))(learning_rate=0.0, b1=b1, b2=b2)
    if name == "sgd":
        return optax.inject_hyperparams(optax.sgd, static_args=("momentum",))(
            learning_rate=0.0, momentum=momentum or None
        )
    raise bad_value("optimizer", repr(name), f"one of {OPTIMIZERS}")


@functools.cache
def make_optimizer(
    name: str, lr: float, *, b1: float = 0.9, b2: float = 0.999, momentum: float = 0.9
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015; `b1`, `b2`) or SGD with heavy-ball `momentum`, at learning rate `lr`.

    The learning rate is set in the state by `init` and read by `update` as a traced value, so the
    optimisers of every learning rate share one `update` and the training loop (whose static
    argument it is) compiles once per architecture (twice for an ensemble whose networks stop at
    different epochs: `_compiled_epochs`): a calibration's pilots and the widths' runs reuse it.
    On a GPU one compilation of the loop took 47 s (benchmarks/RESULTS.md, "GPU"). The learning
    rate takes the parameters' dtype, so float32 training computes as `optax.adam(lr)`."""
    if not lr > 0:
        raise bad_value("lr", lr, "a positive learning rate")
    shared = _learning_rate_in_state(name, b1, b2, momentum)

    def init(params):
        state = shared.init(params)
        dtype = jax.tree.leaves(params)[0].dtype
        return state._replace(hyperparams=dict(state.hyperparams, learning_rate=jnp.asarray(lr, dtype)))

    return optax.GradientTransformation(init, shared.update)


def config_optimizer(config: SweepConfig, lr: float) -> optax.GradientTransformation:
    """`make_optimizer` with `config`'s optimizer settings, at learning rate `lr` (a run's)."""
    return make_optimizer(config.optimizer, lr, b1=config.b1, momentum=config.momentum)


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
        # geomspace of one point is its start: two records are the first and the last epoch.
        later = np.geomspace(1, max(epochs, 1), n_records - 1) if n_records > 2 else [epochs]
        points = np.concatenate([[0], later])
    else:
        raise bad_value("spacing", repr(spacing), f"one of {SPACINGS}")
    return np.unique(np.clip(np.round(points).astype(np.int64), 0, epochs))


def _loss(logits, y, weights=None):
    """Softmax cross-entropy: the mean over the samples, or its `weights`-weighted mean."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.mean(losses) if weights is None else jnp.sum(weights * losses) / jnp.sum(weights)


def _loss_and_accuracy(graphdef, params, x, y):
    logits = nnx.merge(graphdef, params)(x)
    return _loss(logits, y), jnp.mean(jnp.argmax(logits, axis=-1) == y)


# Every compiled program below maps one network's computation over the ensemble axis (axis 0 of
# the parameters, optimizer states and data) with `ensemble.over_networks` (`jax.vmap`, or unrolled
# for a network that convolves on the CPU); a single run is an ensemble of one.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate(graphdef, unrolled, params, x, y):
    """Per network, the loss and accuracy on its (x, y)."""
    return over_networks(functools.partial(_loss_and_accuracy, graphdef), unrolled)(params, x, y)


@jax.jit
def _all_finite(params):
    """Per network: whether every parameter is finite."""
    leaves = [jnp.all(jnp.isfinite(p), axis=tuple(range(1, p.ndim))) for p in jax.tree.leaves(params)]
    return functools.reduce(jnp.logical_and, leaves)


@jax.jit
def _select(mask, new, old):
    """Per network: `new` where `mask`, else `old`."""
    return jax.tree.map(lambda a, b: jnp.where(mask.reshape(-1, *[1] * (a.ndim - 1)), a, b), new, old)


def _step(graphdef, update, params, opt_state, x, y, weights=None):
    """One step of the optimizer's `update` for one network on (x, y), the loss weighted by `weights`
    (None: the plain mean): the loss before the step, the parameters and state after."""

    value, grads = jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p)(x), y, weights))(params)
    updates, opt_state = update(grads, opt_state, params)
    return value, optax.apply_updates(params, updates), opt_state


def _epoch(graphdef, update, batch_size, unroll, params, opt_state, x, y, key, epoch):
    """Epoch `epoch` (counted from 0) of one network: one full-batch step (`batch_size` None), else
    steps on consecutive minibatches of a permutation of the samples drawn from fold_in(key, epoch),
    the last one smaller when `batch_size` does not divide N (padded, with zero weights), their loop
    unrolled where `unroll` (see `_epochs`). Returns
    (every loss finite, parameters, optimizer state): a pure function of the epoch, so a replay
    retraces it."""
    if batch_size is None:
        loss, params, opt_state = _step(graphdef, update, params, opt_state, x, y)
        return jnp.isfinite(loss), params, opt_state
    n = x.shape[0]
    batches = -(-n // batch_size)
    order = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    order = jnp.pad(order, (0, batches * batch_size - n)).reshape(batches, batch_size)
    weights = (jnp.arange(batches * batch_size) < n).reshape(batches, batch_size).astype(x.dtype)

    def step(carry, batch):
        params, opt_state, finite = carry
        index, weight = batch
        loss, params, opt_state = _step(graphdef, update, params, opt_state, x[index], y[index], weight)
        return (params, opt_state, finite & jnp.isfinite(loss)), None

    carry = (params, opt_state, jnp.array(True))
    (params, opt_state, finite), _ = jax.lax.scan(step, carry, (order, weights), unroll=unroll)
    return finite, params, opt_state


def _training_epoch(statics, i, carry, start, key, x, y):
    """Epoch start + i of one network: carry (params, opt_state, every loss finite so far)."""
    params, opt_state, finite = carry
    ok, params, opt_state = _epoch(*statics, params, opt_state, x, y, key, start + i)
    return params, opt_state, finite & ok


def _replay_epoch(statics, i, carry, start, key, x, y, x_test, y_test):
    """Epoch start + i of one network, then its test loss: carry (params, opt_state, best), best the
    (parameters, epoch offset, test loss) of the lowest test loss so far, the start included."""
    params, opt_state, best = carry
    _, params, opt_state = _epoch(*statics, params, opt_state, x, y, key, start + i)
    loss = _loss_and_accuracy(statics[0], params, x_test, y_test)[0]
    better = loss < best[2]
    best = jax.tree.map(lambda new, old: jnp.where(better, new, old), (params, i + 1, loss), best)
    return params, opt_state, best


@functools.partial(jax.jit, static_argnums=(0, 1))
def _compiled_epochs(body, statics, carry, n_steps, *data):
    """Per network e, `n_steps[e]` epochs `body(statics, i, carry, *data)` in one compiled loop, or
    `n_steps` epochs for every network when it is a scalar.

    `body` and `statics` (graph definition, the optimizer's update, batch size, unroll) are static,
    so runs of one architecture share one compilation when their optimizers share an `update` (those
    of `make_optimizer` do, whatever their learning rate). With a count per network the loop's
    condition is batched under `vmap`: it runs max(n_steps) times and, at every step, selects each
    network's new carry or its old one once its own count is done, so a network given 0 steps
    (stopped, diverged) is frozen. That select reads and writes the whole state (parameters and
    optimizer moments) once more per step; a scalar count, one loop for all, has none
    (`benchmarks/trip_count.py`).
    """

    def one(carry, n_steps, *data):
        return jax.lax.fori_loop(0, n_steps, lambda i, c: body(statics, i, c, *data), carry)

    shared = jnp.ndim(n_steps) == 0
    return jax.vmap(one, in_axes=(0, None if shared else 0) + (0,) * len(data))(carry, n_steps, *data)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _one_epoch(body, statics, i, carry, n_steps, *data):
    """Epoch i of `_compiled_epochs` alone, for the networks with i < n_steps[e]."""

    def one(carry, n_steps, *data):
        new = body(statics, i, carry, *data)
        return jax.tree.map(lambda a, b: jnp.where(i < n_steps, a, b), new, carry)

    return over_networks(one, statics[3])(carry, n_steps, *data)


def _epochs(body, statics, carry, n_steps, *data):
    """`_compiled_epochs`, or, for a network that convolves on the CPU (`statics[3]`, see
    `ensemble.convolves_on_cpu`), its epochs dispatched one by one from Python.

    XLA:CPU runs a convolution inside a loop body (`while`) far slower than outside one
    (jax-ml/jax#12868; `benchmarks/conv_loop.py`, the noise experiment's CNN: an epoch of 16
    minibatches dispatched one by one takes 1/18 of its time inside the loop), so a CNN trains on
    the CPU with one dispatch per epoch, its minibatches and its networks unrolled.
    """
    if not statics[3]:
        if np.all(n_steps == n_steps[0]):  # every network takes the same steps: one unbatched loop
            n_steps = n_steps[0]
        return _compiled_epochs(body, statics, carry, n_steps, *data)
    for i in range(int(np.max(n_steps, initial=0))):
        carry = _one_epoch(body, statics, i, carry, n_steps, *data)
    return carry


def train(
    model: nnx.Module,
    split: Split,
    optimizer: optax.GradientTransformation,
    epochs: Sequence[int],
    measure: Measure | None = None,
    *,
    recorder: Callable[[Record], None] | None = None,
    eval_every: int = 10,
    patience: int | None = None,
    batch_size: int | None = None,
    order: Key | None = None,
    mesh: Mesh | None = None,
    checkpoint: Callable[[EnsembleState], None] | None = None,
    checkpoint_every: float = 600.0,
    resume: EnsembleState | None = None,
) -> TrainResult:
    """Train `model` on `split` with softmax cross-entropy, measuring at `epochs`.

    The ensemble of one (`train_ensemble`, which says how): `measure`, `recorder` and `order` are
    that of its one network; `checkpoint` and `resume` take and give its `EnsembleState`.
    """
    return train_ensemble(
        [model],
        [split],
        optimizer,
        epochs,
        None if measure is None else [measure],
        recorders=[recorder],
        eval_every=eval_every,
        patience=patience,
        batch_size=batch_size,
        orders=None if order is None else [order],
        mesh=mesh,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )[0]


@sharding.computes_on(lambda *args, mesh=None, **kwargs: sharding.as_mesh(mesh))
@full_precision
def train_ensemble(
    models: Sequence[nnx.Module],
    splits: Sequence[Split],
    optimizer: optax.GradientTransformation,
    epochs: Sequence[int],
    measures: Sequence[Measure] | None = None,
    *,
    recorders: Sequence[Callable[[Record], None] | None] | None = None,
    eval_every: int = 10,
    patience: int | None = None,
    batch_size: int | None = None,
    orders: Sequence[Key] | None = None,
    mesh: Mesh | None = None,
    checkpoint: Callable[[EnsembleState], None] | None = None,
    checkpoint_every: float = 600.0,
    resume: EnsembleState | None = None,
) -> list[TrainResult]:
    """Train each of `models` on its split with softmax cross-entropy, in one program.

    Network e trains on `splits[e]`, measured by `measures[e]` into `recorders[e]`, with results
    equal to its own separate run (up to the reduction order of float arithmetic): the parameters,
    optimizer states and data of all networks are stacked on a leading ensemble axis and every
    compiled program (the steps between evaluations, the losses, the trace, the replay) maps one
    network's computation over it (`ensemble.over_networks`: `jax.vmap`, unrolled for a network that
    convolves on the CPU). A network that stops (patience) or diverges is
    frozen from then on: it gets 0 steps (its parameters stay as they were), no more evaluations,
    records or trace, while the others go on; the loop ends when every network has stopped.

    The test loss is evaluated every `eval_every` epochs (and at every record). The minimum test loss
    is then pinned to the epoch by a replay: from the parameters kept at the evaluation before the
    lowest one, one epoch at a time over the two evaluation intervals around it (an epoch is a pure
    function of the parameters, the optimizer state and its number, so the replay retraces the
    run). The network at that epoch is measured once more (`TrainResult.minimum`). A loss that
    becomes NaN or Inf ends that network's run with status "diverged" and advice, never an
    exception.

    The trace tr K (every evaluation, `measure.ntk_traces`) is one program for the ensemble.
    The records (`Measure.__call__`) stay a loop over the networks: each needs its own K₀ and
    eigenvectors and a host `eigh`, and in `benchmarks/ensembles.py` (5 seeds, 32-sample NTK batch)
    they run at the same rate in both modes and take 4-20 % of a warm sweep, so vmapping them
    would gain little.

    Parameters
    ----------
    models : Flax nnx modules mapping inputs to (N, C) logits, of one architecture (the same graph,
        parameter shapes and dtypes); not modified (trained copies are returned).
    splits : one `Split` per model (training, NTK and test samples), all of the same array shapes.
    optimizer : an Optax transformation, e.g. from `make_optimizer`; the compiled training loop is
        reused by runs of one architecture whose optimizers share their `update` (those of
        `make_optimizer` with the same settings but the learning rate do).
    epochs : increasing recording epochs (see `record_epochs`); the last one is the training length.
        One epoch is one full-batch step, or a pass over the training set in minibatches.
    measures : one `ntkspec.experiments.measure.Measure` per model, called at each recording epoch
        with the network, the epoch and its losses and accuracies, returning the `Record`. None: no
        records, no trace (e.g. a learning-rate pilot).
    recorders : per model, None or a function called with each `Record` as soon as it is measured
        (e.g. a store writer's `append`).
    eval_every : epochs between two evaluations of the test loss (and of the trace).
    patience : stop a network this many epochs past its lowest test loss so far (None: train to the
        end).
    batch_size : samples per step (None: full batch). Network e's minibatches in epoch t are those
        of a permutation drawn from fold_in(orders[e], t); the last is smaller when `batch_size`
        does not divide the training-set size.
    orders : one PRNG key per model, with `batch_size` (e.g. `Run.order_key`; unused in full batch).
    mesh : a mesh with "data" and "model" axes (as for `ntkspec.ntk`; default: the mesh set with
        `jax.set_mesh`, if any): parameters and optimizer states split on "model", samples on
        "data", the ensemble axis not split; the numbers equal the single-device ones.
    checkpoint : called with the `EnsembleState` after an evaluation once `checkpoint_every`
        seconds have passed since the start or its last call, while a network trains (e.g.
        `store.write_checkpoint`).
    resume : an `EnsembleState` of these models, splits, optimizer and epochs: training goes on
        after its epoch (its records, made before, are the caller's) to the numbers of an
        uninterrupted run.

    Returns
    -------
    One `TrainResult` per model, in order.
    """
    epochs = np.asarray(epochs, dtype=np.int64)
    if epochs.ndim != 1 or epochs.size == 0 or epochs[0] < 0 or np.any(np.diff(epochs) <= 0):
        raise bad_value("epochs", repr(epochs.tolist()), "strictly increasing epochs >= 0")
    if not isinstance(eval_every, int | np.integer) or eval_every < 1:
        raise bad_value("eval_every", repr(eval_every), "an integer >= 1 (epochs between test evaluations)")
    if patience is not None and (not isinstance(patience, int | np.integer) or patience < 0):
        raise bad_value("patience", repr(patience), "an integer >= 0 or None (train to the last epoch)")
    count = len(models)
    if count == 0:
        raise bad_value("models", "an empty list", "one network or more")
    for name, given in (("splits", splits), ("measures", measures), ("recorders", recorders)):
        if given is not None and len(given) != count:
            raise bad_value(name, f"{len(given)} entries for {count} models", "one per model")
    recorders = [None] * count if recorders is None else list(recorders)
    if batch_size is not None and (not isinstance(batch_size, int | np.integer) or batch_size < 1):
        raise bad_value("batch_size", repr(batch_size), "a positive integer or None (full batch)")
    if batch_size is not None and (orders is None or len(orders) != count):
        got = "None" if orders is None else f"{len(orders)} keys for {count} models"
        raise bad_value("orders", got, "one PRNG key per model with batch_size set")
    keys = jax.random.split(jax.random.key(0), count) if batch_size is None else jnp.stack(list(orders))
    graphdef, params = _stack("models", [nnx.split(model) for model in models])
    _, data = _stack("splits", [(None, (s.x_train, s.y_train, s.x_test, s.y_test)) for s in splits])
    opt_state = jax.vmap(optimizer.init)(params)
    last = int(epochs[-1])
    # Per network: the lowest test loss so far, its epoch, and the state kept at the evaluation
    # before it (stacked, on the device: `best_state`) with that evaluation's epoch.
    best_state = (params, opt_state)
    best_loss, best_epoch, best_start = np.full(count, np.inf), np.full(count, -1), np.zeros(count, np.int64)
    active, n_records, stopped = np.ones(count, dtype=bool), np.zeros(count, np.int64), np.full(count, last)
    columns = ("epoch", "train_loss", "test_loss") + (("trace",) if measures is not None else ())
    trajectories = [{name: [] for name in columns} for _ in range(count)]
    messages, previous = [""] * count, 0
    if resume is not None:
        params, opt_state, best_state = tree_from_arrays(
            (params, opt_state, best_state), resume.arrays, "train"
        )
        best_loss, best_epoch, best_start, active, n_records, stopped = (
            np.array(resume.arrays[name]) for name in _BOOKKEEPING
        )
        trajectories = [
            {name: list(resume.arrays[f"trajectory/{e}/{name}"]) for name in columns} for e in range(count)
        ]
        messages, previous = list(resume.messages), resume.epoch
        for e in range(count) if measures is not None else ():
            measures[e].restore(models[e], resume.under(f"measure/{e}"))
    x_ntk = None if measures is None else _stack("measures", [(None, m.x_ntk) for m in measures])[1]
    mesh = sharding.as_mesh(mesh)
    if mesh is not None:
        params, opt_state = sharding.shard_params((params, opt_state), mesh, leading=1)
        data = tuple(sharding.shard_batch(a, mesh, leading=1) for a in data)
    x_train, y_train, x_test, y_test = data
    unrolled = convolves_on_cpu(graphdef, params, x_train)
    statics = (graphdef, optimizer.update, batch_size, unrolled)
    recording = set(epochs.tolist())
    points = sorted(recording | set(range(0, last + 1, eval_every)) | {last})
    kept, kept_epoch, saved = (params, opt_state), previous, time.monotonic()
    for epoch in points if resume is None else [point for point in points if point > resume.epoch]:
        if not active.any():
            break
        n_steps = np.where(active, epoch - previous, 0)
        params, opt_state, finite = _epochs(
            _training_epoch,
            statics,
            (params, opt_state, jnp.ones(count, bool)),
            n_steps,
            jnp.full(count, previous),
            keys,
            x_train,
            y_train,
        )
        metrics = _metrics(graphdef, unrolled, params, (x_train, y_train), (x_test, y_test))
        finite = np.asarray(finite) & np.asarray(_all_finite(params)) & np.isfinite(metrics["train_loss"])
        traces = None
        if measures is not None:
            traces = np.asarray(ntk_traces(graphdef, params, x_ntk, mesh=mesh, unrolled=unrolled))
        improved = np.zeros(count, dtype=bool)
        for e in np.flatnonzero(active):
            if not finite[e]:
                messages[e] = (
                    f"diverged: the training loss became NaN or Inf between epochs {previous} and "
                    f"{epoch}; try a lower learning rate (e.g. 10x lower)"
                )
                stopped[e], active[e] = epoch, False  # frozen from now on
                continue
            values = {
                "epoch": epoch,
                "train_loss": metrics["train_loss"][e],
                "test_loss": metrics["test_loss"][e],
            }
            if traces is not None:
                values["trace"] = traces[e]
            for name, value in values.items():
                trajectories[e][name].append(value)
            if values["test_loss"] < best_loss[e]:
                best_loss[e], best_epoch[e], best_start[e], improved[e] = (
                    values["test_loss"],
                    epoch,
                    kept_epoch,
                    True,
                )
            if measures is not None and epoch in recording:
                own = {name: float(value[e]) for name, value in metrics.items()}
                record = measures[e](nnx.merge(graphdef, _take(params, e)), epoch, own)
                if recorders[e] is not None:
                    recorders[e](record)
                n_records[e] += 1
            if patience is not None and epoch >= best_epoch[e] + patience:
                stopped[e], active[e] = epoch, False
        if improved.all():
            best_state = kept  # no copy of the whole state (an ensemble of one, early in training)
        elif improved.any():
            best_state = _select(jnp.asarray(improved), kept, best_state)
        kept, kept_epoch, previous = (params, opt_state), epoch, epoch
        if checkpoint is not None and active.any() and time.monotonic() - saved >= checkpoint_every:
            bookkeeping = (best_loss, best_epoch, best_start, active, n_records, stopped)
            arrays = tree_arrays((params, opt_state, best_state), "train")
            arrays |= {name: np.array(a) for name, a in zip(_BOOKKEEPING, bookkeeping, strict=True)}
            for e in range(count):
                arrays |= {f"trajectory/{e}/{name}": a for name, a in _arrays(trajectories[e]).items()}
                for name, a in ({} if measures is None else measures[e].state()).items():
                    arrays[f"measure/{e}/{name}"] = a
            checkpoint(EnsembleState(epoch, arrays, tuple(messages)))
            saved = time.monotonic()
    stopped = np.where(active, previous, stopped)  # the networks still training reached the end
    results: list[TrainResult | None] = [
        TrainResult(
            "diverged",
            message,
            int(n_records[e]),
            nnx.merge(graphdef, _take(params, e)),  # as it was when it diverged (frozen since)
            trajectory=_arrays(trajectories[e]),
            stopped=int(stopped[e]),
        )
        if message
        else None
        for e, message in enumerate(messages)
    ]
    finished = [e for e in range(count) if results[e] is None]
    # The minimum lies after the evaluation before the lowest one and before the one after it.
    spans = np.zeros(count, dtype=np.int64)
    for e in finished:
        spans[e] = min(best_epoch[e] + eval_every, stopped[e]) - best_start[e]
    first = (
        best_state[0],
        jnp.zeros(count, jnp.int32),
        _evaluate(graphdef, unrolled, best_state[0], x_test, y_test)[0],
    )
    _, _, (min_params, offsets, min_losses) = _epochs(
        _replay_epoch,
        statics,
        (*best_state, first),
        spans,
        jnp.asarray(best_start),
        keys,
        x_train,
        y_train,
        x_test,
        y_test,
    )
    min_metrics = _metrics(graphdef, unrolled, min_params, (x_train, y_train), (x_test, y_test))
    offsets, min_losses = np.asarray(offsets), np.asarray(min_losses)
    for e in finished:
        min_epoch, min_model = int(best_start[e] + offsets[e]), nnx.merge(graphdef, _take(min_params, e))
        minimum = None
        if measures is not None:
            own = {name: float(value[e]) for name, value in min_metrics.items()}
            minimum = measures[e](min_model, min_epoch, own, consecutive=False)
        results[e] = TrainResult(
            "complete",
            "",
            int(n_records[e]),
            nnx.merge(graphdef, _take(params, e)),
            min_epoch=min_epoch,
            min_test_loss=float(min_losses[e]),
            min_model=min_model,
            minimum=minimum,
            trajectory=_arrays(trajectories[e]),
            stopped=int(stopped[e]),
        )
    return results


#: The per-network bookkeeping of `train_ensemble` an `EnsembleState` carries, by name.
_BOOKKEEPING = ("best_loss", "best_epoch", "best_start", "active", "n_records", "stopped")


def _stack(name: str, trees: list):
    """(graph definition, leaves stacked on a new axis 0) of `trees`, [(graphdef, pytree), ...] that
    must agree in graph definition and in every leaf's shape and dtype (else `name` is named)."""

    def signature(tree) -> list[tuple[str, tuple, str]]:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return [(jax.tree_util.keystr(path), tuple(a.shape), str(a.dtype)) for path, a in leaves]

    graphdef, first = trees[0]
    reference = signature(first)
    for e, (other_def, tree) in enumerate(trees[1:], start=1):
        own = signature(tree)
        if own != reference or other_def != graphdef:
            diff = next(((a, b) for a, b in zip(own, reference, strict=False) if a != b), None)
            if diff is None:
                got = f"entry {e} of another structure ({len(own)} arrays, or another graph)"
                expected = f"the structure of entry 0 ({len(reference)} arrays)"
            else:
                (path, shape, dtype), (_, shape0, dtype0) = diff
                got = f"entry {e} with {path} of shape {shape} {dtype}"
                expected = f"shape {shape0} {dtype0}, as in entry 0"
            raise bad_value(
                name,
                got,
                expected,
                "One ensemble trains networks of one architecture on data of one size; train the "
                "others in an ensemble of their own (in a sweep: another swept value), or alone.",
            )
    return graphdef, jax.tree.map(
        lambda *leaves: jnp.stack([jnp.asarray(a) for a in leaves]), *(t for _, t in trees)
    )


def _take(tree, e: int):
    """Network e's slice of a stacked pytree."""
    return jax.tree.map(lambda a: a[e], tree)


def _metrics(graphdef, unrolled, params, train_set, test_set) -> dict[str, np.ndarray]:
    """Per network, loss and accuracy on its training and test set (`records.METRIC_FIELDS`)."""
    train_loss, train_accuracy, test_loss, test_accuracy = (
        np.asarray(a, np.float64)
        for dataset in (train_set, test_set)
        for a in _evaluate(graphdef, unrolled, params, *dataset)
    )
    return dict(zip(METRIC_FIELDS, (train_loss, test_loss, train_accuracy, test_accuracy), strict=True))


def _arrays(columns: dict[str, list]) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(values, dtype=np.int64 if name == "epoch" else np.float64)
        for name, values in columns.items()
    }
