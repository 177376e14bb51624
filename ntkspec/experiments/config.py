"""Sweep configs: TOML -> validated `SweepConfig` -> runs, and every PRNG key derived from a run.

A config names what a sweep varies (its `kind`, see `records.KINDS`), the data, the model, the optimiser
and the recording schedule. `load_config` reads a TOML file or a shipped config (`ntkspec/configs/`) with
overrides; `SweepConfig.from_dict` checks every field once, naming a bad one, what came and what is
allowed. `runs(config)` lists the runs; `Run.keys()` derives the data, initialisation and probe keys
from the run's seed, here and nowhere else. `parse_task` reads the "i/n" of a job array.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
import types
import typing
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ntkspec import data, models
from ntkspec._errors import bad_value
from ntkspec._typing import Key
from ntkspec.experiments.records import KERNELS, KINDS, RUN_FIELDS
from ntkspec.spectrum import METHODS

OPTIMIZERS = ("adam", "sgd")
SPACINGS = ("linear", "log")
DTYPES = ("float32", "float64")
_KERNEL_FIELDS = ("kernels", "pretrained_samples", "kernel_ridges")


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep configuration (build it with `SweepConfig.from_dict` or `load_config`).

    kind : "width", "data_size" or "noise" (what the runs sweep, see the module docstring).
    dataset, data_dir, classes : the data (`ntkspec.data.load`; `classes` picks and orders a subset).
    model, depth, widths : "mlp" (depth = number of Dense layers) or "cnn"; widths swept for kind
        "width", the single width otherwise.
    init : the weight initialiser (`ntkspec.models.INITS`; None: the model's own, LeCun-normal for
        the MLP, He-uniform for the CNN).
    data_sizes, noise_fractions : swept for kinds "data_size" and "noise".
    seeds : number of seeds, 0 .. seeds - 1.
    n_train, n_ntk, n_test : training samples, NTK batch size, test-set cap (None: all the rest).
    noise_fraction, noise_std : noisy-copy replacement for kinds other than "noise".
    optimizer, lr, b1, momentum : Adam (b1) or SGD (momentum); `lr = "calibrate"` picks a
        learning rate per swept value by the reference study's rule (see `sweep.calibrate`).
    batch_size : samples per step, in a fresh random order every epoch (`train.train_ensemble`);
        None: full batch, one step per epoch.
    epochs, n_records, spacing : the longest training and the recording schedule
        (`train.record_epochs`).
    min_epoch_window : [lower, upper] epochs between which the minimum test loss must fall for a
        calibrated learning rate (the study: 400 and 1000).
    patience : stop training this many epochs past the lowest test loss so far (None: train to
        `epochs`).
    eval_every : epochs between two evaluations of the test loss and the trace (the minimum is then
        pinned to the epoch by a replay).
    pilot_runs : most pilot trainings a calibration may spend per swept value.
    top_k, method : top eigenvalues kept per record, spectrum method.
    dtype : parameter and input dtype.
    ensemble : train the seeds of a swept value together, as one program (`train.train_ensemble`),
        or one by one (False); the numbers agree either way, so a store may be resumed with the
        other setting.
    checkpoint_every : seconds between two checkpoints of an ensemble in training (at its
        evaluations; `train.train_ensemble`, `store.write_checkpoint`), from which a killed sweep goes
        on; 0: at every evaluation. Never changes the numbers.
    store : store path (default "runs/{name}.zarr").
    kernels : for kind "data_size", kernels to fit kernel regression with after each run's training
        (`records.KERNELS`; see `against_kernels`); empty: none.
    pretrained_samples : k of the "pretrained" kernel, one of `data_sizes` (the eNTK of that size's
        trained network of the same seed; fitted for sizes n >= k).
    kernel_ridges : the ρ tried for the kernel regressions' ridge λ = ρ · tr K / rows (the one of
        lowest MSE on the NTK batch is kept; one value: used as given).
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
    init: str | None = None
    data_sizes: tuple[int, ...] = ()
    noise_fractions: tuple[float, ...] = ()
    seeds: int = 3
    n_train: int = 100
    n_ntk: int = 128
    n_test: int | None = None
    noise_fraction: float = 0.0
    noise_std: float = 0.01
    optimizer: str = "adam"
    lr: float | str = 1e-3
    b1: float = 0.9
    momentum: float = 0.9
    batch_size: int | None = None
    epochs: int = 1000
    min_epoch_window: tuple[int, ...] = (400, 1000)
    patience: int | None = None
    eval_every: int = 10
    pilot_runs: int = 8
    n_records: int = 20
    spacing: str = "log"
    top_k: int = 10
    method: str = "auto"
    dtype: str = "float32"
    ensemble: bool = True
    checkpoint_every: float = 600.0
    store: str | None = None
    kernels: tuple[str, ...] = ()
    pretrained_samples: int | None = None
    kernel_ridges: tuple[float, ...] = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)

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
            "kind": tuple(KINDS),
            "dataset": data.DATASETS,
            "model": models.MODELS,
            "optimizer": OPTIMIZERS,
            "spacing": SPACINGS,
            "method": METHODS,
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
        if isinstance(self.lr, str) and self.lr != "calibrate":
            raise bad_value("lr", f"{self.lr!r} (str)", "a value of type float, or the string 'calibrate'")
        for name in ("lr", "noise_std"):
            if not isinstance(getattr(self, name), str) and not getattr(self, name) > 0:
                raise bad_value(name, getattr(self, name), "a positive number")
        window = self.min_epoch_window
        if len(window) != 2 or not 0 <= window[0] < window[1]:
            raise bad_value("min_epoch_window", list(window), "[lower, upper] with 0 <= lower < upper")
        if self.lr == "calibrate" and self.epochs < window[1]:
            raise bad_value(
                "epochs",
                self.epochs,
                f"at least the window's upper end {window[1]} with lr = 'calibrate'",
                "Raise epochs (the cap), or lower min_epoch_window.",
            )
        if self.patience is not None and self.patience < 0:
            raise bad_value(
                "patience", self.patience, "a non-negative integer (or leave it out: no early stop)"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise bad_value("batch_size", self.batch_size, "a positive integer (or leave it out: full batch)")
        if self.init is not None and self.init not in models.INITS:
            raise bad_value("init", repr(self.init), f"one of {tuple(models.INITS)} (or leave it out)")
        for name in ("eval_every", "pilot_runs"):
            if getattr(self, name) < 1:
                raise bad_value(name, getattr(self, name), "a positive integer")
        if not self.checkpoint_every >= 0:
            raise bad_value(
                "checkpoint_every", self.checkpoint_every, "seconds >= 0 (0: at every evaluation)"
            )
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
        swept = self.swept
        if len(set(swept)) != len(swept):
            raise bad_value(KINDS[self.kind].field, list(swept), "distinct values")
        if self.classes is not None:
            known = data.CLASS_NAMES[self.dataset]
            if len(set(self.classes)) < 2 or not set(self.classes) <= set(known):
                raise bad_value(
                    "classes", list(self.classes), f"two or more distinct classes of {self.dataset}: {known}"
                )
        self._check_kernels()
        if self.model == "cnn" and self.kind == "width":
            raise bad_value(
                "kind",
                "'width' with model 'cnn'",
                "kind 'data_size' or 'noise' for the CNN",
                "The CNN has a fixed width (32 filters, 64 dense units).",
            )

    def _check_kernels(self) -> None:
        kernels, k = self.kernels, self.pretrained_samples
        unknown = [name for name in kernels if name not in KERNELS]
        if unknown or len(set(kernels)) != len(kernels):
            raise bad_value("kernels", list(kernels), f"distinct names of {KERNELS}")
        if kernels and self.kind != "data_size":
            raise bad_value(
                "kernels",
                list(kernels),
                "none for kind " + repr(self.kind),
                "Kernels go with kind 'data_size'.",
            )
        infinite = [name for name in kernels if name in ("ntk_infinite", "nngp")]
        if infinite and (self.model != "mlp" or self.init not in (None, "lecun_normal")):
            raise bad_value(
                "kernels",
                list(kernels),
                f"no {infinite} with model {self.model!r} and init {self.init!r}",
                "K∞ and the NNGP are the LeCun-normal MLP's.",
            )
        if not self.kernel_ridges or not all(rho > 0 for rho in self.kernel_ridges):
            raise bad_value(
                "kernel_ridges", list(self.kernel_ridges), "positive numbers ρ (λ = ρ · tr K / rows)"
            )
        if "pretrained" not in kernels:
            if k is not None:
                raise bad_value("pretrained_samples", k, "no value without 'pretrained' in kernels")
            return
        if k is None or k not in self.data_sizes:
            raise bad_value(
                "pretrained_samples",
                k,
                f"one of data_sizes {list(self.data_sizes)} with 'pretrained' in kernels",
                "The pretrained network is that size's run of the same seed (its learning rate too).",
            )

    def to_dict(self) -> dict:
        """Plain TOML/JSON-friendly values (tuples as lists, None dropped).

        The kernel fields appear only where `kernels` is set, so that a store written before they
        existed still matches its config (`store.open_store`).
        """
        out = {}
        unused = () if self.kernels else _KERNEL_FIELDS
        for key, value in dataclasses.asdict(self).items():
            if value is not None and key not in unused:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def swept(self) -> tuple:
        """The swept values: widths, data sizes or noise fractions, by `kind`."""
        return getattr(self, KINDS[self.kind].field)

    @property
    def store_path(self) -> Path:
        return Path(self.store) if self.store else Path("runs") / f"{self.name}.zarr"


def _coerce(name: str, hint: object, value: object) -> object:
    """Check `value` against the field's type hint; lists become tuples, ints pass as floats."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and value is None:
        return None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        choices = [a for a in args if a is not type(None)]
        for choice in choices[1:]:  # e.g. lr: float | str takes a number or a word
            if isinstance(value, choice) and not isinstance(value, bool):
                return value
        hint = choices[0]
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


def point_of(name: str) -> str:
    """The label of a run's swept value, shared by its seeds (and its calibration): `w64` for `w64_s0`."""
    return name.rsplit("_s", 1)[0]


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its store name, what it trains, and its attributes in the store."""

    index: int
    name: str
    seed: int
    width: int
    n_train: int
    noise_fraction: float

    def keys(self) -> tuple[Key, Key, Key]:
        """(data draw, initialisation, spectrum probes): every PRNG key of a run, from its seed.

        Only the swept quantity changes between the runs of one seed: the same draw of samples (nested
        training sets for data-size sweeps), the same initialisation key, the same probes.
        """
        return run_keys(self.seed)

    def order_key(self) -> Key:
        """The key of the minibatches' order: the data key folded with 1 (apart from `keys`, which
        full-batch stores were drawn from)."""
        return jax.random.fold_in(self.keys()[0], 1)

    @property
    def point(self) -> str:
        """The swept value's label shared by its seeds: `w64` for `w64_s0`."""
        return point_of(self.name)

    def attrs(self, config: SweepConfig, lr: float | None = None) -> dict:
        """The run's attributes (`records.RUN_FIELDS`), as stored beside its records; `lr` is the
        learning rate it trains with (the config's, or the calibrated one)."""
        values = {
            "kind": config.kind,
            "width": self.width,
            "depth": config.depth,
            "model": config.model,
            "seed": self.seed,
            "dataset": config.dataset,
            "classes": list(config.classes) if config.classes else None,
            "n_train": self.n_train,
            "n_ntk": config.n_ntk,
            "noise_fraction": self.noise_fraction,
            "lr": config.lr if lr is None else lr,
        }
        return {name: values[name] for name in RUN_FIELDS}


def run_keys(seed: int) -> tuple[Key, Key, Key]:
    """(data draw, initialisation, spectrum probes) of the runs with this seed."""
    k_data, k_model, k_spectrum = jax.random.split(jax.random.key(seed), 3)
    return k_data, k_model, k_spectrum


def runs(config: SweepConfig) -> list[Run]:
    """All runs of the sweep, swept value major, seed minor (so `task` striping mixes costs)."""
    out = []
    swept = KINDS[config.kind]
    for value in config.swept:
        for seed in range(config.seeds):
            run = {
                "width": config.widths[0],
                "n_train": config.n_train,
                "noise_fraction": config.noise_fraction,
            }
            run[swept.attribute] = value
            out.append(Run(len(out), swept.run_name(value, seed), seed, **run))
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


def run_split(config: SweepConfig, run: Run, dataset: data.Dataset) -> data.Split:
    """The run's training set, NTK batch and test set, drawn from its data key."""
    return data.split(
        dataset,
        run.n_train,
        config.n_ntk,
        run.keys()[0],
        n_test=config.n_test,
        classes=config.classes,
        noise_fraction=run.noise_fraction,
        noise_std=config.noise_std,
        flatten=config.model == "mlp",
        dtype=np.dtype(config.dtype),
    )


def run_model(config: SweepConfig, run: Run, split: data.Split):
    """The run's freshly initialised network (`ntkspec.models.build`), from its initialisation key."""
    return models.build(
        config.model,
        split.x_train.shape[1:],
        split.num_classes,
        run.keys()[1],
        width=run.width,
        depth=config.depth,
        init=config.init,
        param_dtype=jnp.dtype(config.dtype),
    )
