"""Sweep stores written through the real writer (`store.RunWriter`), with synthetic records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ntkspec.experiments import store
from ntkspec.experiments.config import SweepConfig, runs
from ntkspec.experiments.records import SCALAR_FIELDS, Record

TOP_K = 3


def record(epoch: int, value: float) -> Record:
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
            writer.append(record(10 * epoch, float(run.index)))
        status = statuses.get(run.name, "complete")
        if status != "running":
            writer.finish(status, "loss became NaN" if status == "diverged" else "")
    return path
