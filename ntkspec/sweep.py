"""Sweeps: a TOML config becomes a list of runs, each trained with its NTK spectra written to a store.

Kinds of sweep (`SweepConfig.kind`):

* "width": width x seed, runs `w{width}_s{seed}` (the model-scaling transition);
* "data_size": training-set size x seed, runs `n{size}_s{seed}` (data scaling; for one seed the
  training sets are nested and the NTK batch and test set are shared, see `ntkspec.data.split`);
* "noise": noisy-copy fraction x seed, runs `p{percent}_s{seed}` (the CIFAR-4 experiment).

A seed fixes the data draw, the initialisation and the estimators' probes; within a seed only the swept
quantity changes. `run_sweep(config, task=(i, n))` runs the runs whose index is i modulo n, so n
processes can share one store; runs already complete (or diverged) are skipped, so rerunning after a
crash resumes (runs left "running" by a killed process, or "failed", start again from epoch 0).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import time
import tomllib
import types
import typing
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ntkspec import data, models, store
from ntkspec._errors import bad_value
from ntkspec.train import (
    OPTIMIZERS,
    SPACINGS,
    Record,
    make_optimizer,
    ntk_spectra,
    record_epochs,
    train,
)

KINDS = ("width", "data_size", "noise")
DTYPES = ("float32", "float64")
SPECTRUM_METHODS = ("auto", "exact", "stochastic")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep configuration (build it with `SweepConfig.from_dict` or `load_config`).

    kind : "width", "data_size" or "noise" (what the runs sweep, see the module docstring).
    dataset, data_dir, classes : the data (`ntkspec.data.load`; `classes` picks and orders a subset).
    model, depth, widths : "mlp" (depth = number of Dense layers) or "cnn"; widths swept for kind
        "width", the single width otherwise.
    data_sizes, noise_fractions : swept for kinds "data_size" and "noise".
    seeds : number of seeds, 0 .. seeds - 1.
    n_train, n_ntk, n_test : training samples, NTK batch size, test-set cap (None: all the rest).
    noise_fraction, noise_std : noisy-copy replacement for kinds other than "noise".
    optimizer, lr, b1, momentum : full-batch Adam (b1) or SGD (momentum).
    epochs, n_records, spacing : training length and recording schedule (`train.record_epochs`).
    top_k, method : top eigenvalues kept per record, spectrum method.
    dtype : parameter and input dtype.
    store : store path (default "runs/{name}.zarr").
    """

    name: str = "sweep"
    description: str = ""
    kind: str = "width"
    dataset: str = "digits"
    data_dir: str | None = None
    classes: tuple[str, ...] | None = None
    model: str = "mlp"
    depth: int = 3
    widths: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    data_sizes: tuple[int, ...] = ()
    noise_fractions: tuple[float, ...] = ()
    seeds: int = 3
    n_train: int = 100
    n_ntk: int = 128
    n_test: int | None = None
    noise_fraction: float = 0.0
    noise_std: float = 0.01
    optimizer: str = "adam"
    lr: float = 1e-3
    b1: float = 0.9
    momentum: float = 0.9
    epochs: int = 1000
    n_records: int = 20
    spacing: str = "log"
    top_k: int = 10
    method: str = "auto"
    dtype: str = "float32"
    store: str | None = None

    @classmethod
    def from_dict(cls, values: dict) -> SweepConfig:
        """Validate `values` (e.g. parsed TOML) field by field; a bad field raises naming it."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise bad_value(
                f"config field {unknown[0]!r}",
                "an unknown field",
                f"one of the fields {sorted(fields)}",
                "Check its spelling.",
            )
        hints = typing.get_type_hints(cls)
        cleaned = {name: _coerce(name, hints[name], value) for name, value in values.items()}
        config = cls(**cleaned)
        config._check()
        return config

    def _check(self) -> None:
        choices = {
            "kind": KINDS,
            "dataset": data.DATASETS,
            "model": models.MODELS,
            "optimizer": OPTIMIZERS,
            "spacing": SPACINGS,
            "method": SPECTRUM_METHODS,
            "dtype": DTYPES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise bad_value(name, repr(getattr(self, name)), f"one of {allowed}")
        positive = ("depth", "seeds", "n_train", "n_ntk", "n_records", "top_k")
        for name in positive:
            if getattr(self, name) < 1:
                raise bad_value(name, getattr(self, name), "a positive integer")
        if self.epochs < 0:
            raise bad_value("epochs", self.epochs, "a non-negative integer")
        if self.n_records < 2:
            raise bad_value("n_records", self.n_records, "at least 2 (first and last epoch)")
        if self.n_test is not None and self.n_test < 1:
            raise bad_value("n_test", self.n_test, "a positive integer (or leave it out: all)")
        if not self.name or any(c in self.name for c in "/\\"):
            raise bad_value("name", repr(self.name), "a non-empty name without slashes")
        for name in ("lr", "noise_std"):
            if not getattr(self, name) > 0:
                raise bad_value(name, getattr(self, name), "a positive number")
        for name in ("b1", "momentum", "noise_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise bad_value(name, getattr(self, name), "a number in [0, 1)")
        if not self.widths or any(w < 1 for w in self.widths):
            raise bad_value("widths", list(self.widths), "a non-empty list of positive integers")
        if self.kind != "width" and len(self.widths) != 1:
            raise bad_value(
                "widths",
                list(self.widths),
                f"exactly one width for kind {self.kind!r}",
                "Only kind 'width' sweeps widths.",
            )
        if self.kind == "data_size" and (not self.data_sizes or min(self.data_sizes) < 1):
            raise bad_value("data_sizes", list(self.data_sizes), "a non-empty list of positive integers")
        fractions = self.noise_fractions
        if self.kind == "noise" and (not fractions or not all(0 <= f < 1 for f in fractions)):
            raise bad_value("noise_fractions", list(fractions), "a non-empty list in [0, 1)")
        swept = {"width": self.widths, "data_size": self.data_sizes, "noise": fractions}[self.kind]
        if len(set(swept)) != len(swept):
            raise bad_value(_SWEPT_FIELD[self.kind], list(swept), "distinct values")
        if self.classes is not None:
            known = data.CLASS_NAMES[self.dataset]
            if len(set(self.classes)) < 2 or not set(self.classes) <= set(known):
                raise bad_value(
                    "classes", list(self.classes), f"two or more distinct classes of {self.dataset}: {known}"
                )
        if self.model == "cnn" and self.kind == "width":
            raise bad_value(
                "kind",
                "'width' with model 'cnn'",
                "kind 'data_size' or 'noise' for the CNN",
                "The CNN has a fixed width (32 filters, 64 dense units).",
            )

    def to_dict(self) -> dict:
        """Plain TOML/JSON-friendly values (tuples as lists, None dropped)."""
        out = {}
        for key, value in dataclasses.asdict(self).items():
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store else Path("runs") / f"{self.name}.zarr"


_SWEPT_FIELD = {"width": "widths", "data_size": "data_sizes", "noise": "noise_fractions"}


def _coerce(name: str, hint: object, value: object) -> object:
    """Check `value` against the field's type hint; lists become tuples, ints pass as floats."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and value is None:
        return None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise bad_value(name, repr(value), f"a list of {item.__name__}")
        return tuple(_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise bad_value(name, f"{value!r} ({type(value).__name__})", f"a value of type {hint.__name__}")
    return value


def builtin_configs() -> dict[str, Path]:
    """The configs shipped with ntkspec (`ntkspec/configs/*.toml`), by name."""
    folder = importlib.resources.files("ntkspec") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def load_config(source: str | Path | None = None, **overrides) -> SweepConfig:
    """Read a config from a TOML file path or a built-in name (default "quickstart"), with overrides.

    Overrides are config fields (e.g. `widths=(16, 64)`, `seeds=2`); None values are ignored.
    """
    source = "quickstart" if source is None else source
    path = Path(source).expanduser()
    if not path.is_file():
        builtin = builtin_configs()
        if str(source).removesuffix(".toml") not in builtin:
            raise bad_value(
                "config",
                repr(str(source)),
                f"a TOML file or a built-in config name: one of {sorted(builtin)}",
            )
        path = builtin[str(source).removesuffix(".toml")]
    with open(path, "rb") as stream:
        try:
            values = tomllib.load(stream)
        except tomllib.TOMLDecodeError as error:
            raise bad_value("config", str(path), f"valid TOML ({error})") from error
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SweepConfig.from_dict(values)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its store name and what it trains."""

    index: int
    name: str
    seed: int
    width: int
    n_train: int
    noise_fraction: float


def runs(config: SweepConfig) -> list[Run]:
    """All runs of the sweep, swept value major, seed minor (so `task` striping mixes costs)."""
    out = []
    values = {"width": config.widths, "data_size": config.data_sizes}.get(config.kind, config.noise_fractions)
    for value in values:
        for seed in range(config.seeds):
            width, n_train, fraction = config.widths[0], config.n_train, config.noise_fraction
            if config.kind == "width":
                width, label = value, f"w{value}"
            elif config.kind == "data_size":
                n_train, label = value, f"n{value}"
            else:
                fraction, label = value, f"p{round(100 * value):g}"
            out.append(Run(len(out), f"{label}_s{seed}", seed, width, n_train, fraction))
    return out


def parse_task(task: str | tuple[int, int]) -> tuple[int, int]:
    """ "i/n" (or (i, n)) -> (i, n) with 0 <= i < n."""
    if isinstance(task, str):
        parts = task.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise bad_value("task", repr(task), "'i/n' with integers 0 <= i < n, e.g. '3/16'")
        task = (int(parts[0]), int(parts[1]))
    i, n = task
    if not 0 <= i < n:
        raise bad_value("task", f"{i}/{n}", "'i/n' with integers 0 <= i < n, e.g. '3/16'")
    return i, n


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """What `run_sweep` did with the runs of its task.

    done: trained now (complete or diverged); skipped: finished before; diverged: of those done, the
    ones whose loss became non-finite; failed: runs that raised a runtime error (retried next time).
    """

    store: Path
    done: tuple[str, ...]
    skipped: tuple[str, ...]
    diverged: tuple[str, ...]
    failed: tuple[str, ...]
    seconds: float
    complete: bool  # every run of the whole sweep (all tasks) has finished


def _run_attrs(config: SweepConfig, run: Run) -> dict:
    return {
        "kind": config.kind,
        "width": run.width,
        "depth": config.depth,
        "model": config.model,
        "seed": run.seed,
        "dataset": config.dataset,
        "classes": list(config.classes) if config.classes else None,
        "n_train": run.n_train,
        "n_ntk": config.n_ntk,
        "noise_fraction": run.noise_fraction,
    }


def run_sweep(
    config: SweepConfig,
    *,
    task: str | tuple[int, int] = (0, 1),
    progress: bool = True,
    console: Console | None = None,
    mesh: Mesh | None = None,
) -> SweepSummary:
    """Run the runs of `config` that belong to `task` ("i/n": index i modulo n) and are not finished.

    Each run: data split and model from its seed, full-batch training, a record per recording epoch
    appended to the store, then its final status: "complete", "diverged" (with advice) or "failed"
    (a runtime error such as running out of memory; the sweep goes on, and a rerun retries the run).
    With a `mesh` (`ntkspec.sharding.make_mesh`), training and spectra run sharded across its devices.
    Bad input raises. A Rich progress bar shows the current run, epoch and the time remaining.
    """
    start = time.perf_counter()
    index, count = parse_task(task)
    if config.dtype == "float64" and not jax.config.jax_enable_x64:
        raise bad_value(
            "dtype", "'float64' with JAX's 64-bit mode off", "'float32'", "Or set JAX_ENABLE_X64=1."
        )
    root = store.open_store(config.store_path, config.to_dict())
    mine = [run for run in runs(config) if run.index % count == index]
    finished = {run.name for run in mine if store.run_status(root, run.name) in store.FINISHED}
    todo = [run for run in mine if run.name not in finished]
    dataset = data.load(config.dataset, config.data_dir) if todo else None
    optimizer = make_optimizer(config.optimizer, config.lr, b1=config.b1, momentum=config.momentum)
    epochs = record_epochs(config.epochs, config.n_records, config.spacing)
    dtype = jnp.dtype(config.dtype)
    done, diverged, failed = [], [], []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        bar_task = bar.add_task(config.name, total=len(todo) * config.epochs)
        for number, run in enumerate(todo, 1):
            label = f"[{number}/{len(todo)}] {run.name}: width {run.width} seed {run.seed}"
            base = (number - 1) * config.epochs
            bar.update(bar_task, description=f"{label} epoch 0", completed=base)
            key = jax.random.key(run.seed)
            k_data, k_model, k_spectrum = jax.random.split(key, 3)
            split = data.split(
                dataset,
                run.n_train,
                config.n_ntk,
                k_data,
                n_test=config.n_test,
                classes=config.classes,
                noise_fraction=run.noise_fraction,
                noise_std=config.noise_std,
                flatten=config.model == "mlp",
                dtype=dtype,
            )
            writer = store.RunWriter(root, run.name, _run_attrs(config, run), config.top_k)

            def record(rec: Record, writer=writer, label=label, base=base) -> None:
                writer.append(rec)
                description = f"{label} epoch {rec.epoch}"
                bar.update(bar_task, description=description, completed=base + rec.epoch)

            try:
                model = models.build(
                    config.model,
                    split.x_train.shape[1:],
                    split.num_classes,
                    k_model,
                    width=run.width,
                    depth=config.depth,
                    param_dtype=dtype,
                )
                result = train(
                    model,
                    split,
                    optimizer,
                    epochs,
                    k_spectrum,
                    top_k=config.top_k,
                    method=config.method,
                    recorder=record,
                    mesh=mesh,
                )
            except (RuntimeError, MemoryError) as error:
                # A runtime failure of one run (e.g. out of device memory at the widest width) is data:
                # recorded with its message, the sweep goes on, and the next `run_sweep` retries it.
                writer.finish("failed", f"{type(error).__name__}: {error} (rerun the sweep to retry)")
                failed.append(run.name)
                continue
            message = result.message
            if result.status == "diverged":
                message += f" (optimizer {config.optimizer}, lr {config.lr:g})"
                diverged.append(run.name)
            writer.finish(result.status, message)
            done.append(run.name)
        bar.update(bar_task, completed=len(todo) * config.epochs)
    complete = all(store.run_status(root, run.name) in store.FINISHED for run in runs(config))
    return SweepSummary(
        store=config.store_path,
        done=tuple(done),
        skipped=tuple(run.name for run in mine if run.name in finished),
        diverged=tuple(diverged),
        failed=tuple(failed),
        seconds=time.perf_counter() - start,
        complete=complete,
    )


def init_spectrum(
    *,
    width: int,
    depth: int,
    n_ntk: int,
    dataset: str = "digits",
    model: str = "mlp",
    method: str = "auto",
    seed: int = 0,
    top_k: int = 10,
    data_dir: str | None = None,
    dtype: str = "float32",
    mesh: Mesh | None = None,
):
    """Spectra (raw, cosine) of the NTK at initialisation of one model on `n_ntk` held-out samples.

    The same draw as a sweep's run with this seed: same NTK batch, same initialisation.
    """
    if method not in SPECTRUM_METHODS:
        raise bad_value("method", repr(method), f"one of {SPECTRUM_METHODS}")
    k_data, k_model, k_spectrum = jax.random.split(jax.random.key(seed), 3)
    split = data.split(
        data.load(dataset, data_dir),
        1,
        n_ntk,
        k_data,
        n_test=1,
        flatten=model == "mlp",
        dtype=np.dtype(dtype),
    )
    net = models.build(
        model,
        split.x_ntk.shape[1:],
        split.num_classes,
        k_model,
        width=width,
        depth=depth,
        param_dtype=jnp.dtype(dtype),
    )
    # Epoch 0 of a sweep's run folds the same key the same way.
    return ntk_spectra(net, jnp.asarray(split.x_ntk), jax.random.fold_in(k_spectrum, 0), top_k, method, mesh)
