"""What a checkpoint of an ensemble in training costs: bytes, and seconds to write and to read back.

The state `train_ensemble` hands out (`ntkspec.experiments.checkpoint.EnsembleState`: the stacked
parameters and Adam states now and at the kept minimum, per-network bookkeeping, each `Measure`'s K₀
and last kernel) of the protocol's depth-3 MLP (784 -> w -> w -> 10, 5 seeds, NTK batch 128, exact
spectra), taken from a 2-epoch training on uniform inputs, written with `store.write_checkpoint`
and read with `store.read_checkpoint`, the best of `--repeats`. A sweep writes one every
`checkpoint_every` seconds (600 by default): the write over 600 s is its share of the sweep's time.

Usage: nice -n 10 python -m benchmarks.checkpoint [--widths 512,2048,4096] [--seeds 5]
    [--out benchmarks/results/checkpoint.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "checkpoint.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.checkpoint", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--widths", default="512,2048,4096")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    import zarr

    from benchmarks._harness import machine, study_mlp, write_json
    from ntkspec import data
    from ntkspec.experiments import store
    from ntkspec.experiments.measure import Measure
    from ntkspec.experiments.train import make_optimizer, train_ensemble

    rng = np.random.default_rng(0)

    def split(seed: int) -> data.Split:
        x = rng.uniform(size=(356, 784)).astype(np.float32)
        y = rng.integers(0, 10, 356).astype(np.int32)
        classes = tuple(str(c) for c in range(10))
        return data.Split(x[:100], y[:100], x[100:228], y[100:228], x[228:], y[228:], classes)

    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        splits = [split(seed) for seed in range(args.seeds)]
        states = []
        train_ensemble(
            [study_mlp(width, key=seed) for seed in range(args.seeds)],
            splits,
            make_optimizer("adam", 1e-4),
            [0, 2],
            [Measure(s, jax.random.key(seed), method="exact") for seed, s in enumerate(splits)],
            eval_every=1,
            checkpoint=states.append,
            checkpoint_every=0,
        )
        state = states[-1]
        with tempfile.TemporaryDirectory() as folder:
            root = zarr.open_group(str(Path(folder) / "s.zarr"), mode="w")
            write, read = [], []
            for _ in range(args.repeats):
                tick = time.perf_counter()
                store.write_checkpoint(root, "ensemble", state)
                write.append(time.perf_counter() - tick)
                tick = time.perf_counter()
                store.read_checkpoint(root.store.root, "ensemble")
                read.append(time.perf_counter() - tick)
        nbytes = sum(a.nbytes for a in state.arrays.values())
        row = {
            "width": width,
            "seeds": args.seeds,
            "bytes": nbytes,
            "write_s": min(write),
            "read_s": min(read),
            "share_at_600_s": min(write) / 600,
        }
        rows.append(row)
        print(
            f"w={width}: {nbytes / 2**20:.0f} MiB, write {row['write_s']:.2f} s, read {row['read_s']:.2f} s",
            flush=True,
        )
    result = {"benchmark": "checkpoint", "rows": rows, "machine": machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(args.out)


if __name__ == "__main__":
    main()
