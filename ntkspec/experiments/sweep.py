"""Sweeps, orchestration only: the runs of a config trained and measured, each written to the store.

Kinds of sweep (`records.KINDS`): width x seed (runs `w{width}_s{seed}`, the model-scaling
transition), training-set size x seed (`n{size}_s{seed}`; for one seed the training sets are nested and
the NTK batch and test set shared, see `ntkspec.data.split`), noisy-copy fraction x seed
(`p{percent}_s{seed}`). `run_sweep(config, task=(i, n))` runs the runs whose index is i modulo n, so n
processes (a job array) can share one store. Each run is owned by one process at a time
(`store.claim`): a process skips the runs another one holds and says so. Runs already finished and
reading back whole are skipped, so rerunning after a crash resumes; runs left "running" by a killed
process, "failed", or no longer reading back (a corrupt or missing chunk) start again from epoch 0,
except an ensemble left "running" with a checkpoint (every `checkpoint_every` seconds): it goes on
from there.
With `ensemble = true` (the default) the runs of one swept value that a process owns and has to do
train as one ensemble (`train.train_ensemble`: one compiled program, the same numbers per seed),
each into its own writer; with false, one by one.
Progress is reported through a callback; the command line draws it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
from jax.sharding import Mesh

from ntkspec import data
from ntkspec._errors import bad_value
from ntkspec.experiments import against_kernels, store
from ntkspec.experiments.checkpoint import EnsembleState
from ntkspec.experiments.config import Run, SweepConfig, parse_task, run_model, run_split, runs
from ntkspec.experiments.measure import Measure
from ntkspec.experiments.records import FINISHED
from ntkspec.experiments.train import config_optimizer, record_epochs, train, train_ensemble


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a sweep is: run `number` of `total` to train now (`run`), at `epoch` of `epochs`."""

    number: int
    total: int
    run: Run
    epoch: int
    epochs: int


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """What `run_sweep` did with the runs of its task.

    done: trained now (complete or diverged); skipped: finished before; busy: held by another process
    (left to it); diverged: of those done, the ones whose loss became non-finite; failed: runs that
    raised a runtime error (retried next time); corrupt: finished runs that no longer read back
    (named here, and trained again); resumed: of those done, the ones that went on from a
    checkpoint of their ensemble, as "name@epoch". Runs whose swept value could not be calibrated
    count as done, with status "uncalibrated".
    """

    store: Path
    done: tuple[str, ...]
    skipped: tuple[str, ...]
    diverged: tuple[str, ...]
    failed: tuple[str, ...]
    seconds: float
    complete: bool  # every run of the whole sweep (all tasks) has finished
    busy: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()


def run_sweep(
    config: SweepConfig,
    *,
    task: str | tuple[int, int] = (0, 1),
    progress: Callable[[Progress], None] | None = None,
    mesh: Mesh | None = None,
) -> SweepSummary:
    """Run the runs of `config` that belong to `task` ("i/n": index i modulo n) and are not finished.

    Each run: data split and model from its seed, full-batch or minibatch training, a record per
    recording epoch appended to the store, then its final status: "complete", "diverged" (with
    advice) or "failed" (a runtime error such as running out of memory; the sweep goes on, and a
    rerun retries the run).
    With a `mesh`, training and spectra run sharded across its devices. Bad input raises. `progress`
    is called when a run starts and after every record.
    """
    start = time.perf_counter()
    index, count = parse_task(task)
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise bad_value(
            "dtype", "'float64' with JAX's 64-bit mode off", "'float32'", "Or set JAX_ENABLE_X64=1."
        )
    root = store.open_store(config.store_path, config.to_dict())
    path = config.store_path
    mine = [run for run in runs(config) if run.index % count == index]
    corrupt = {
        run.name: why
        for run in mine
        if store.run_status(root, run.name) in FINISHED and (why := store.verify(path, run.name))
    }
    todo = [run for run in mine if store.run_status(root, run.name) not in FINISHED or run.name in corrupt]
    dataset = data.load(config.dataset, config.data_dir) if todo else None
    epochs = record_epochs(config.epochs, config.n_records, config.spacing)
    done, skipped, busy, diverged, failed, resumed = [], [], [], [], [], []
    pretrained: dict = {}  # the size-k networks of `against_kernels.pretrained_network`, per run name

    def record(rec, *, writer, run, number) -> None:
        writer.append(rec)
        if progress is not None:
            progress(Progress(number, len(todo), run, rec.epoch, config.epochs))

    if config.ensemble:  # the seeds of one swept value (that this task owns) together
        groups = [list(group) for _, group in itertools.groupby(mine, key=lambda run: run.point)]
    else:
        groups = [[run] for run in mine]
    for group in groups:
        with contextlib.ExitStack() as claims:
            claimed = []
            for run in group:
                if run not in todo:
                    skipped.append(run.name)
                elif not claims.enter_context(store.claim(path, run.name)):
                    busy.append(run.name)
                elif store.run_status(root, run.name) in FINISHED and not store.verify(path, run.name):
                    skipped.append(run.name)  # finished by another process meanwhile
                else:
                    claimed.append(run)
            if not claimed:
                continue
            first = len(done) + len(failed) + 1
            calibration = calibrate(config, claimed[0], dataset, root) if config.lr == "calibrate" else None
            statuses, epoch = _train_runs(
                config, claimed, first, dataset, epochs, root, record, mesh, calibration, pretrained
            )
            if epoch is not None:
                resumed += [f"{run.name}@{epoch}" for run in claimed]
            for run, status in zip(claimed, statuses, strict=True):
                (failed if status == "failed" else done).append(run.name)
                if status == "diverged":
                    diverged.append(run.name)
    complete = all(store.run_status(root, run.name) in FINISHED for run in runs(config))
    return SweepSummary(
        store=path,
        done=tuple(done),
        skipped=tuple(skipped),
        diverged=tuple(diverged),
        failed=tuple(failed),
        seconds=time.perf_counter() - start,
        complete=complete and not busy,
        busy=tuple(busy),
        corrupt=tuple(corrupt),
        resumed=tuple(resumed),
    )


def _train_runs(
    config, group, first, dataset, epochs, root, record, mesh, calibration, pretrained
) -> tuple[list[str], int | None]:
    """Train and measure the runs of `group` (seeds of one swept value) as one ensemble, each into its
    writer, the runs numbered from `first` for `record`: their final statuses, and the epoch of the
    checkpoint they went on from (None: from epoch 0). Runs of size `pretrained_samples` leave their
    outcome in `pretrained` for the larger sizes' regressions."""
    lr = config.lr if calibration is None else calibration["lr"]
    key = f"{group[0].point}_s{'-'.join(str(run.seed) for run in group)}"  # the ensemble's checkpoint
    resume, writers = _writers(config, group, root, key, lr)
    if calibration is not None and calibration["status"] != "calibrated":
        for writer in writers:
            writer.finish("uncalibrated", calibration["message"])
        return ["uncalibrated"] * len(group), None
    epoch = None if resume is None else resume.epoch
    try:
        splits = [run_split(config, run, dataset) for run in group]
        measures = [
            Measure(split, run.keys()[2], top_k=config.top_k, method=config.method, mesh=mesh)
            for run, split in zip(group, splits, strict=True)
        ]
        results = train_ensemble(
            [run_model(config, run, split) for run, split in zip(group, splits, strict=True)],
            splits,
            config_optimizer(config, lr),
            epochs,
            measures,
            recorders=[
                functools.partial(record, writer=writer, run=run, number=first + i)
                for i, (run, writer) in enumerate(zip(group, writers, strict=True))
            ],
            eval_every=config.eval_every,
            patience=config.patience,
            batch_size=config.batch_size,
            orders=[run.order_key() for run in group],
            mesh=mesh,
            checkpoint=functools.partial(store.write_checkpoint, root, key),
            checkpoint_every=config.checkpoint_every,
            resume=resume,
        )
    except (RuntimeError, MemoryError, store.CorruptRunError) as error:
        # A runtime failure (e.g. out of device memory at the widest width) is data: recorded with
        # its message for every run of the ensemble, the sweep goes on, and the next `run_sweep`
        # retries them.
        advice = " (rerun the sweep to retry"
        advice += "; ensemble = false trains one seed at a time)" if len(group) > 1 else ")"
        for writer in writers:
            writer.finish("failed", f"{type(error).__name__}: {error}{advice}")
        store.delete_checkpoint(root, key)
        return ["failed"] * len(group), epoch
    store.delete_checkpoint(root, key)  # trained: the outcome is written from memory below
    for run, result in zip(group, results, strict=True):
        if config.kernels and run.n_train == config.pretrained_samples:
            pretrained[run.name] = against_kernels.trained_outcome(run, result)
    calibrated = functools.partial(calibrate, config, dataset=dataset, root=root)
    regressions = [  # the network against its kernels (`against_kernels`), after its training
        functools.partial(
            against_kernels.evaluate,
            config,
            run,
            split,
            dataset=dataset,
            calibrate=calibrated,
            known=pretrained,
        )
        if config.kernels
        else None
        for run, split in zip(group, splits, strict=True)
    ]
    statuses = [
        _finish(writer, result, config, lr, regression)
        for writer, result, regression in zip(writers, results, regressions, strict=True)
    ]
    return statuses, epoch


def _writers(config, group, root, key, lr) -> tuple[EnsembleState | None, list[store.RunWriter]]:
    """The checkpoint the ensemble `group` goes on from (None: none, or one its runs do not match),
    and its runs' writers: keeping each run's records up to the checkpoint, else fresh."""
    resume = store.read_checkpoint(config.store_path, key)
    if resume is not None:
        try:
            kept = resume.arrays["n_records"]
            return resume, [
                store.RunWriter(root, run.name, run.attrs(config, lr), config.top_k, n_kept=int(n))
                for run, n in zip(group, kept, strict=True)
            ]
        except (store.CorruptRunError, KeyError, ValueError):
            store.delete_checkpoint(root, key)  # a run was finished, retried or lost meanwhile
    return None, [store.RunWriter(root, run.name, run.attrs(config, lr), config.top_k) for run in group]


def _finish(writer, result, config, lr, regressions=None) -> str:
    """Write one trained run's outcome (and `regressions(network at the minimum)` where given)
    and its status; "failed" if it does not read back."""
    try:
        message = result.message
        if result.status == "diverged":
            message += f" (optimizer {config.optimizer}, lr {lr:g})"
        else:
            writer.outcome(
                result.min_epoch, result.min_test_loss, result.stopped, result.minimum, result.trajectory
            )
            if regressions is not None:
                writer.kernels(regressions(result.min_model))
        writer.finish(result.status, message)
        return result.status
    except (RuntimeError, MemoryError, store.CorruptRunError) as error:
        writer.finish("failed", f"{type(error).__name__}: {error} (rerun the sweep to retry)")
        return "failed"


#: Learning rates tried by a calibration lie on this grid: 10^(k / LR_STEPS_PER_DECADE) · 1e-3.
LR_STEPS_PER_DECADE = 4
#: Pilots stop this many epochs past their lowest test loss when the config sets no patience.
PILOT_PATIENCE = 200


def calibrate(config: SweepConfig, run: Run, dataset, root) -> dict:
    """The learning rate of `run`'s swept value by the reference study's rule (App. D.1).

    The largest learning rate on a log grid (`LR_STEPS_PER_DECADE` per decade) whose minimum test
    loss falls inside `config.min_epoch_window`, found by pilot trainings of the value's seed-0 run
    (its data and initialisation; no spectra). The epoch of the minimum scales roughly as 1/lr, so
    each pilot outside the window moves the next one by the factor that would put its minimum at the
    window's geometric centre; once one falls inside, the next larger grid value is tried, until one
    falls too early. The result (status "calibrated" or "uncalibrated" with advice, the chosen `lr`,
    and every pilot's lr and epoch of the minimum) is stored with the value, once: the other seeds,
    and a resumed sweep, read it back. Until then each finished pilot is stored (status
    "calibrating") and the one in training is checkpointed as an ensemble is (`checkpoint_every`):
    a calibration that was killed replays the finished pilots and goes on with the last from its
    checkpoint.
    """
    point = run.point
    with store.claim(config.store_path, f"calibrate_{point}", wait=True):  # one calibration per value
        stored = store.read_calibration(config.store_path, point)
        if stored is not None and stored["status"] != "calibrating":
            return stored
        # Pilots already trained, by grid step: (epoch of the minimum, whether training completed).
        done = {} if stored is None else _stored_pilots(stored)
        lower, upper = config.min_epoch_window
        centre = (lower * upper) ** 0.5
        pilot = next(r for r in runs(config) if r.point == point and r.seed == 0)
        split = run_split(config, pilot, dataset)
        patience = PILOT_PATIENCE if config.patience is None else config.patience
        tried: dict[int, int] = {}
        step, best = 0, None
        while len(tried) < config.pilot_runs and step not in tried:
            if step not in done:
                key = f"{point}_pilot_lr{_grid_lr(step):.3g}"  # its checkpoint, as an ensemble's
                result = train(
                    run_model(config, pilot, split),
                    split,
                    config_optimizer(config, _grid_lr(step)),
                    [0, config.epochs],
                    eval_every=config.eval_every,
                    patience=patience,
                    batch_size=config.batch_size,
                    order=pilot.order_key(),
                    checkpoint=functools.partial(store.write_checkpoint, root, key),
                    checkpoint_every=config.checkpoint_every,
                    resume=store.read_checkpoint(config.store_path, key),
                )
                store.delete_checkpoint(root, key)
                completed = result.status == "complete"
                reached = completed and result.min_epoch < result.stopped
                epoch = result.min_epoch if reached else config.epochs + 1  # no minimum: too slow
                done[step] = (epoch, completed)
                store.write_calibration(root, point, _calibrating(done))
            epoch, completed = done[step]
            tried[step] = epoch
            if lower <= epoch <= upper:
                best = step if best is None else max(best, step)
                step += 1
            elif epoch < lower or not completed:
                if best is not None:
                    break
                step -= max(1, round(LR_STEPS_PER_DECADE * math.log10(centre / max(epoch, 1))))
            else:
                step += max(1, round(LR_STEPS_PER_DECADE * math.log10(epoch / centre)))
        pilots = [[_grid_lr(k), e] for k, e in sorted(tried.items())]
        if best is not None:
            chosen = _grid_lr(best)
            result = {"status": "calibrated", "lr": chosen, "pilots": pilots, "message": ""}
        else:
            result = {
                "status": "uncalibrated",
                "lr": None,
                "pilots": pilots,
                "message": (
                    f"no learning rate of {len(pilots)} pilots (lr, epoch of the minimum test loss: "
                    f"{pilots}) put the minimum in {list(config.min_epoch_window)}; raise pilot_runs, "
                    "widen min_epoch_window or raise epochs"
                ),
            }
        store.write_calibration(root, point, result)
        return result


def _grid_lr(step: int) -> float:
    return 1e-3 * 10 ** (step / LR_STEPS_PER_DECADE)


def _calibrating(done: dict[int, tuple[int, bool]]) -> dict:
    """The stored form of an unfinished calibration: its pilots so far, those that did not complete
    (diverged) named in `failed`."""
    return {
        "status": "calibrating",
        "lr": None,
        "pilots": [[_grid_lr(k), epoch] for k, (epoch, _) in sorted(done.items())],
        "failed": [_grid_lr(k) for k, (_, completed) in sorted(done.items()) if not completed],
        "message": "pilots so far; the sweep goes on from them",
    }


def _grid_step(lr: float) -> int:
    return round(LR_STEPS_PER_DECADE * math.log10(lr / 1e-3))


def _stored_pilots(stored: dict) -> dict[int, tuple[int, bool]]:
    """`_calibrating`'s pilots back by grid step."""
    failed = {_grid_step(lr) for lr in stored["failed"]}
    return {_grid_step(lr): (int(epoch), _grid_step(lr) not in failed) for lr, epoch in stored["pilots"]}
